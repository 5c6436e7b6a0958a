"""prefkit: preference-data-centric direct alignment of LLMs.

Stages (each a plain function and a `prefkit` subcommand):
load -> synth -> score -> relabel -> select -> train -> evaluate.
"""

__version__ = "0.1.0"

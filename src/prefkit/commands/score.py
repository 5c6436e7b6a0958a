"""`prefkit score` (placeholder until its stage lands)."""

from prefkit.commands import placeholder

register = placeholder("score")

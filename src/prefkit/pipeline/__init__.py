"""Recipes and the engine that runs them: `prefkit run RECIPE.yaml` (docs/loop.md).

    from prefkit.pipeline import run, load_recipe, status
    result = run("examples/recipes/toy-quick.yaml", "runs/toy-quick")
    status("runs/toy-quick")["steps"]

A recipe names a policy, prompts, a number of rounds and, per round, stages with the options of
their stage functions (`prefkit.pipeline.stages` maps each stage to its function and options
object). Each stage's output is cached under RUN_DIR/round-K/STAGE/KEY by a hash of its inputs
and options; a rerun skips finished stages and resumes an interrupted one.
"""

from prefkit.pipeline.engine import plan, run, status
from prefkit.pipeline.recipe import Recipe, load_recipe
from prefkit.pipeline.stages import ORDER, STAGES

__all__ = ["ORDER", "Recipe", "STAGES", "load_recipe", "plan", "run", "status"]

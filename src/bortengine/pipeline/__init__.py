"""The whole Bort system in one call on the user's teacher and data: profile this CPU, fine-tune the teacher on the
task, extract the student (FPTAS on this CPU's latency and a task-aware surrogate), distil it from the teacher,
fine-tune it (with Agora on small data), evaluate both on the engine and write the report and a latency suite.
`bortengine pipeline` is its command; see docs/pipeline.md.

    from bortengine.pipeline import PipelineConfig, run_pipeline

    if __name__ == "__main__":   # the extraction's workers are spawned and import the main script again
        summary = run_pipeline(PipelineConfig(out="runs/reviews", train="reviews.csv", budget=45 * 60))

Importing this package is cheap (no torch); the stages import what they need.
"""
from bortengine.pipeline.config import (BUDGET_SHARES, CONFIG_FILE, SCARCE_EXAMPLES, STAGES, PipelineConfig,
                                        PipelineError, read_config_file)
from bortengine.pipeline.run import STATE_FILE, run_pipeline
from bortengine.pipeline.stages import choose_student, space_below

__all__ = ["PipelineConfig", "PipelineError", "run_pipeline", "read_config_file", "STAGES", "BUDGET_SHARES",
           "CONFIG_FILE", "STATE_FILE", "SCARCE_EXAMPLES", "space_below", "choose_student"]

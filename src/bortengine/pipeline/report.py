"""The pipeline's report: report.json (everything measured), report.md (the table teacher vs student, the time each
stage took) and the figures (the extraction's Pareto front with the chosen student, accuracy against latency of
teacher and student; Agora's rounds are its own figure, copied by the fine-tuning stage).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from bortengine.files import atomic_write_json, atomic_write_text, save_figure

__all__ = ["write_report", "report_table"]

SMALL_TEST_SET = 200   # texts: below it, report.md says how far one text moves an accuracy


def write_report(out: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """OUT/report.json, OUT/report.md and the PNGs; returns their paths."""
    paths = {"json": atomic_write_json(out / "report.json", summary, indent=2),
             "md": atomic_write_text(out / "report.md", _markdown(summary))}
    evaluation = summary.get("stages", {}).get("evaluate", {}).get("result")
    if evaluation:
        paths["accuracy_latency"] = _accuracy_latency_plot(out / "accuracy_latency.png", evaluation)
    extraction = summary.get("stages", {}).get("extract", {}).get("result")
    if extraction and extraction.get("candidates"):
        paths["pareto"] = _pareto_plot(out / "pareto.png", extraction)
    return paths


def _row(name: str, teacher: Any, student: Any) -> str:
    return f"| {name} | {teacher} | {student} |"


def report_table(evaluation: dict[str, Any]) -> str:
    """The teacher-vs-student table (markdown)."""
    t, s, speed = evaluation["teacher"], evaluation["student"], evaluation["speedup"]
    size = s["parameters"] / t["parameters"]
    effective = s["parameters_without_embeddings"] / t["parameters_without_embeddings"]
    n = evaluation.get("test_texts")     # (not in the evaluations of runs from before it was recorded)
    on = f" ({n} test texts)" if n else ""
    lines = [
        "| | teacher | student |", "|---|---|---|",
        _row("architecture ⟨D, A, H, I⟩", t["architecture"], s["architecture"]),
        _row("parameters", f"{t['parameters'] / 1e6:.1f} M", f"{s['parameters'] / 1e6:.1f} M ({size:.0%})"),
        _row("parameters without embeddings (effective size)", f"{t['parameters_without_embeddings'] / 1e6:.2f} M",
             f"{s['parameters_without_embeddings'] / 1e6:.2f} M ({effective:.1%})"),
        _row(f"test accuracy, float32{on}", f"{t['test_accuracy_float32']:.4f}", f"{s['test_accuracy_float32']:.4f}"),
        _row(f"test accuracy, int8{on}", f"{t['test_accuracy_int8']:.4f}", f"{s['test_accuracy_int8']:.4f}"),
        _row("int8: layers run in float32 / bf16 (calibrated on the training texts)", _kept(t), _kept(s)),
        _row("batch 1, engine float32 (ms, median)", f"{t['batch1_ms_float32']:.3f}",
             f"{s['batch1_ms_float32']:.3f} ({speed['engine_batch1_float32']:.1f}× faster)"),
        _row("batch 1, engine int8 (ms, median)", f"{t['batch1_ms_int8']:.3f}",
             f"{s['batch1_ms_int8']:.3f} ({speed['engine_batch1_int8']:.1f}× faster)"),
        _row("batch 1, PyTorch eager (ms, median)", f"{t['batch1_ms_pytorch_eager']:.3f}",
             f"student int8 on the engine: {speed['student_int8_vs_teacher_pytorch_eager']:.1f}× faster"),
        _row(f"batched ({evaluation['latency_inputs']['batch']} texts), engine float32 (texts/s)",
             f"{t['batched_texts_per_s_float32']:.0f}", f"{s['batched_texts_per_s_float32']:.0f}"),
        _row(f"batched ({evaluation['latency_inputs']['batch']} texts), engine int8 (texts/s)",
             f"{t['batched_texts_per_s_int8']:.0f}", f"{s['batched_texts_per_s_int8']:.0f}"),
    ]
    return "\n".join(lines)


def _few_texts(n: Optional[int]) -> str:
    """What a small test set's accuracies can tell: one text moves them by 100 / n points."""
    if not n or n >= SMALL_TEST_SET:
        return ""
    return (f" The test set has {n} text(s): one text moves an accuracy by {100 / n:.1f} points, so differences "
            f"smaller than that are not differences.")


def _kept(model: dict[str, Any]) -> str:
    """The layers the model's int8 calibration takes out of int8 (float32 or bf16), and the token cosine it
    measured."""
    calibration = model.get("int8_calibration") or {}
    if model.get("int8_float32_layers") is None:
        return "not calibrated"
    kept = [f"{', '.join(map(str, model.get(f'int8_{d}_layers') or []))} in {d}" for d in ("float32", "bf16")
            if model.get(f"int8_{d}_layers")]
    said = "; ".join(kept) or "none"
    if "min_cosine" in calibration:
        said += (f" (min token cosine {calibration['min_cosine']:.4f}; all int8 "
                 f"{calibration['all_int8_min_cosine']:.4f})")
    return said


def _markdown(summary: dict[str, Any]) -> str:
    stages = summary.get("stages", {})
    evaluation = stages.get("evaluate", {}).get("result")
    lines = [f"# bortengine pipeline: {summary['task']['name']}", "",
             f"{summary['task']['description']}. Teacher: `{summary['config'].get('teacher') or 'all-MiniLM-L6-v2'}`; "
             f"workload {summary.get('workload')}, CPU target "
             f"`{summary.get('target', '?')}`.", ""]
    if evaluation:
        inputs = evaluation["latency_inputs"]
        lines += [report_table(evaluation), "",
                  f"Latencies: {inputs['texts']} test texts drawn with a fixed seed (mean {inputs['mean_tokens']:.1f} "
                  f"tokens{_cut_to(inputs)}), one per call, in blocks of 12 per model taking turns, {inputs['rounds']} "
                  f"rounds; medians." + _few_texts(evaluation.get("test_texts")), ""]
    lines += _student_lines(stages)
    interrupted = summary.get("interrupted_seconds") or {}
    lines += ["## Time per stage", "", "| stage | budget | took | |", "|---|---|---|---|"]
    for name, entry in stages.items():
        note = entry.get("result", {}).get("note", "") if isinstance(entry.get("result"), dict) else ""
        before = f" (+{interrupted[name]:.0f} s before an interruption)" if interrupted.get(name, 0) >= 0.5 else ""
        lines.append(f"| {name} | {entry.get('budget_s', 0):.0f} s | {entry.get('seconds', 0):.0f} s{before} | "
                     f"{note} |")
    lost = sum(interrupted.values())
    lines += ["", f"Total: {summary['seconds']:.0f} s of a {summary['config']['budget']:.0f} s budget"
              + (f", and {lost:.0f} s in runs that were interrupted (the stages went on from their checkpoints; "
                 f"the budget counts finished stages)" if lost >= 0.5 else "") + ".", ""]
    return "\n".join(lines)


def _cut_to(inputs: dict[str, Any]) -> str:
    """The length the latencies were measured at (the student's), where the run recorded it."""
    length = inputs.get("max_length")
    return f", cut to the student's {length}" if length else ""


def _student_lines(stages: dict[str, Any]) -> list[str]:
    """How the student was chosen (predicted and measured speed-up) and fine-tuned (augmentation or Agora)."""
    extraction = stages.get("extract", {}).get("result") or {}
    finetune = stages.get("finetune", {}).get("result") or {}
    lines = ["## The student", ""]
    if extraction.get("given"):
        lines.append(f"Architecture {_arch_text(extraction['architecture'])} given (--arch).")
    elif extraction:
        measured = extraction.get("measured_speedup")
        speed = (f"predicted {extraction['teacher_predicted_ms'] / extraction['predicted_ms']:.1f}x faster than the "
                 f"teacher" + (f", measured {measured:.1f}x on this CPU's engine ({extraction.get('measured_on')})"
                               if measured else ""))
        reranking = extraction.get("reranking")
        if reranking is None:      # a run from before the re-ranking
            lines.append(f"Architecture {_arch_text(extraction['architecture'])}: the lowest surrogate error of "
                         f"{_count(extraction['evaluations'], 'student')} the extraction evaluated, {speed}. "
                         + _sentence(extraction.get("note", "")))
        else:
            scored = [s for s in reranking["students"] if s["error"] is not None]
            unscored = [s["architecture"] for s in reranking["students"] if s["error"] is None]
            settings = reranking["settings"]
            lines.append(
                f"Architecture {_arch_text(extraction['architecture'])}, {speed}. The FPTAS evaluated "
                f"{_count(extraction['evaluations'], 'student')} with the fine-tuning surrogate; its choice "
                f"({extraction['fptas_choice']}) and the widest student of each depth measured fast enough were "
                f"to be re-ranked by a surrogate that distils each from the teacher ({settings['distil_steps']} steps) "
                f"before it fine-tunes it ({settings['steps']} steps): "
                + (", ".join(f"{s['architecture']} {s['error']:.4f}" for s in sorted(scored, key=lambda s: s["error"]))
                   or "none was scored")
                + (f"; not re-ranked in the stage's time: {', '.join(unscored)}" if unscored else "")
                + ". " + _sentence(extraction.get("note", "")))
    if finetune.get("agora"):
        near, dev = finetune["near_texts"], finetune["dev_accuracy_engine"]
        chosen = "Agora's" if finetune["chosen"] == "agora" else "the first"
        # a stage finished before there were transfer pieces counted its near texts only, as augmented_examples
        near_texts, pieces = near.get("near_examples", near["augmented_examples"]), near.get("transfer_examples", 0)
        lines.append(f"Fine-tuned on the training set, {near_texts} texts near its texts and {pieces} pieces of the "
                     f"distillation's built-in documents cut to its texts' lengths (a transfer set), labelled by the "
                     f"teacher, learning the teacher's soft labels too ({near['steps']} steps; test accuracy "
                     f"{near['test_accuracy']:.4f}); then Agora's rounds from that model "
                     f"({_count(finetune['rounds'], 'round')}; "
                     f"test accuracy {finetune['plain_test_accuracy']:.4f} after its first, "
                     f"{finetune['round_rows'][-1]['test_accuracy']:.4f} after its last): agora_rounds.png. Dev "
                     f"accuracy on the part Agora selects with: {dev['near']:.4f} first, {dev['agora']:.4f} Agora"
                     + (f" (Agora's is taken only when more accurate by over one standard error, "
                        f"{finetune['agora_margin']:.4f})" if "agora_margin" in finetune else "")
                     + f"; {chosen} model is the student.")
    elif finetune and not finetune.get("augmented_examples"):   # a text-pair task: no near texts are made
        lines.append(f"Fine-tuned on the training set, learning the teacher's soft labels too ({finetune['steps']} "
                     f"steps; a text-pair task gets no near texts: the word swaps that make them vary single texts).")
    elif finetune:
        lines.append(f"Fine-tuned on the training set and {finetune['augmented_examples']} texts near its texts "
                     f"labelled by the teacher, learning the teacher's soft labels too ({finetune['steps']} steps).")
    return lines + [""] if len(lines) > 2 else []


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _sentence(note: str) -> str:
    """A stage's note (printed alone as it ran) as a sentence of the report's paragraph."""
    return note + "." if note and not note.endswith(".") else note


def _accuracy_latency_plot(path: Path, evaluation: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    t = evaluation["teacher"]
    points = [("teacher, engine float32", t["batch1_ms_float32"], t["test_accuracy_float32"], "tab:blue", "o"),
              ("teacher, engine int8", t["batch1_ms_int8"], t["test_accuracy_int8"], "tab:blue", "s"),
              ("teacher, PyTorch eager", t["batch1_ms_pytorch_eager"], t["test_accuracy_float32"], "tab:gray", "o")]
    s = evaluation["student"]
    points += [("student, engine float32", s["batch1_ms_float32"], s["test_accuracy_float32"], "tab:red", "o"),
               ("student, engine int8", s["batch1_ms_int8"], s["test_accuracy_int8"], "tab:red", "s")]
    for label, ms, acc, color, marker in points:
        ax.scatter([ms], [acc], color=color, marker=marker, label=label, s=50)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency on this CPU (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("teacher and student: accuracy against latency")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _pareto_plot(path: Path, extraction: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    rows = extraction["candidates"]
    ax.scatter([r["latency_ms"] for r in rows], [r["error"] for r in rows], color="0.7", s=14, label="evaluated")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_ms"])
    ax.plot([r["latency_ms"] for r in front], [r["error"] for r in front], "o-", color="tab:blue", ms=4,
            label="Pareto front")
    name = _arch_text(extraction["architecture"])
    chosen = next((r for r in rows if r["architecture"] == name), None)
    if chosen:
        ax.scatter([chosen["latency_ms"]], [chosen["error"]], marker="*", s=180, color="tab:red", zorder=5,
                   label=f"chosen {name}")
    else:       # a student the re-ranking chose that the FPTAS did not evaluate: its predicted latency
        ax.axvline(extraction["predicted_ms"], color="tab:red", ls="--", label=f"chosen {name} (re-ranked)")
    ax.axvline(extraction["teacher_predicted_ms"], color="0.4", ls=":", label="teacher")
    ax.set_xlabel("predicted latency on this CPU (ms)")
    ax.set_ylabel("surrogate error (dev cross-entropy)")
    ax.set_title("extraction: students of the teacher")
    handles, labels = ax.get_legend_handles_labels()
    scored = [r for r in (extraction.get("reranking") or {}).get("students", []) if r["error"] is not None]
    if scored:      # another surrogate, another scale: its own axis
        twin = ax.twinx()
        twin.scatter([r["latency_ms"] for r in scored], [r["error"] for r in scored], marker="^", s=36,
                     color="tab:orange", label="re-ranked (distil, then fine-tune)")
        for r in scored:
            twin.annotate(r["architecture"], (r["latency_ms"], r["error"]), fontsize=6, xytext=(3, 2),
                          textcoords="offset points")
        twin.set_ylabel("re-ranking loss (dev cross-entropy)", color="tab:orange")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0))
    return save_figure(fig, path)


def _arch_text(arch: dict[str, Any]) -> str:
    from bortengine.architecture import Architecture

    return str(Architecture.from_dict(arch))

"""distil_finetune_scores.py TEACHER STEPS D,A,H,I...: a prototype surrogate that distils first, then fine-tunes
(docs/pipeline.md, the narrow regime). A student cut from the fine-tuned teacher with its classifier's columns (as
the fine-tuning surrogate cuts it); STEPS steps of the extraction's distillation loss on Rotten Tomatoes' training
texts (batch 16, 64 tokens); then the fine-tuning surrogate's 30 steps; its dev cross-entropy, one line a student."""
import sys, time
from dataclasses import replace
import torch
from bortengine import training
from bortengine.architecture import Architecture
from bortengine.training import distill as D
from bortengine.training.data import load_split

def score(arch, t_dir, steps, ft_steps=30):
    t_model, importance, _, t_dir = training.teacher_bundle(t_dir)
    clf = training.teacher_classifier(t_dir)
    head = replace(arch, head="classifier", num_labels=clf.config.num_labels)
    student, layer_map = training.slice_init(head, clf, importance)
    student.config.id2label = dict(clf.config.id2label); student.config.label2id = dict(clf.config.label2id)
    config = training.DistillConfig(student=replace(arch, head="pooler"), out_dir="", teacher=t_dir, seed=0,
                                    batch_size=16, max_length=64, lr=2e-4, warmup_steps=max(1, steps // 10),
                                    max_steps=steps, checkpoint_every=float("inf"), log_every=10**9, threads=2,
                                    max_documents=max(64, steps * 16 // 4))
    t_arch = training.architecture_of(training.encoder_of(t_model))
    narrower = arch.hidden < t_arch.hidden
    proj = torch.sort(torch.topk(importance.hidden, arch.hidden).indices).values if narrower else None
    loss_fn = D.DistillationLoss(config, t_arch, layer_map, proj)
    tok = D.TextTokenizer.from_directory(t_dir, 64)
    docs = [("task", e.text) for e in load_split("rt", "train")]
    corpus = D._Corpus(tok, 0, config.max_documents, docs, None)
    s = D._Student(student.bert, None)
    params = list(s.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    torch.manual_seed(0); torch.set_num_threads(2); s.train()
    def loss_of(idx):
        ids, mask = D.collate([corpus.segments[i] for i in idx])
        with torch.no_grad():
            t_out, _ = D._teacher_forward(t_model, ids, mask)
        s_out, _ = D._student_forward(s, ids, mask, mlm=False)
        return loss_fn(s_out, t_out, mask)[0], int(mask.sum())
    training.TrainingLoop(params, opt, D.distillation_schedule(config), [len(x) for x in corpus.segments], 16, 0,
                          bucket=64, max_steps=steps).run(loss_of)
    fc = training.FinetuneConfig(model=t_dir, tokenizer=t_dir, task="rt", seed=0, batch_size=32, eval_limit=256,
                                 threads=2)
    return training.finetune_surrogate_loss(fc, steps=ft_steps, model=student)

if __name__ == "__main__":
    teacher, steps = sys.argv[1], int(sys.argv[2])
    for a in sys.argv[3:]:
        t = time.time()
        loss = float(score(Architecture.parse(a, vocab_size=30522), teacher, steps))
        print(a, round(loss, 4), f"{time.time() - t:.0f} s", flush=True)

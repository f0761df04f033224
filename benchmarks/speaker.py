"""Speaker verification on unseen speakers: resemblyzer (frozen) vs dmlkit's SpeakerEncoder.

Speakers come from Debian's ``flite`` voices (awb, rms, slt, kal16: four real voices)
reading random sentences; each voice is pitch-shifted with ``sox pitch`` into extra
pseudo-speakers (formants move with the pitch, so they sound like other people of the
same voice, but they are not real speakers). Training uses every pseudo-speaker of the
``--train-voices``; evaluation uses only the others (unseen voices). Trials are all pairs
of test utterances; EER and minDCF (p_target 0.01) of cosine scores.

    python benchmarks/speaker.py --steps 150

Needs ``flite`` and ``sox`` (apt-get install flite sox) and ``dmlkit[audio]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmlkit.data.audio import crop_dataset, load_speaker_folder
from dmlkit.functional.verification import equal_error_rate, min_dcf, roc_curve
from dmlkit.losses import ArcFaceLoss
from dmlkit.models import SpeakerEncoder

WORDS = ("the a my your old young quiet bright small heavy green cold river garden doctor "
         "window teacher morning station letter market island village captain engine "
         "carried opened painted followed watched found left moved brought counted near "
         "under across behind before after slowly quickly seven twelve ninety yesterday "
         "tomorrow every never always perhaps").split()


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(7, 13)))).capitalize() + "."


def synthesize(root: Path, voices: list[str], shifts: list[int], n_utts: int, seed: int) -> None:
    """``root/<voice>_<cents>/<k>.wav``: each voice at each pitch shift reads n_utts lines."""
    rng = np.random.default_rng(seed)
    for v in voices:
        for c in shifts:
            d = root / f"{v}_{c:+d}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n_utts):
                raw = d / f"{k}.raw.wav"
                subprocess.run(["flite", "-voice", v, "-t", sentence(rng), "-o", str(raw)],
                               check=True)
                if c:
                    subprocess.run(["sox", str(raw), str(d / f"{k}.wav"), "pitch", str(c)],
                                   check=True)
                    raw.unlink()
                else:
                    raw.rename(d / f"{k}.wav")


def scores_eer(emb: np.ndarray, labels: np.ndarray) -> dict:
    iu = np.triu_indices(len(labels), 1)
    s = (emb @ emb.T)[iu]
    same = (labels[:, None] == labels[None, :])[iu]
    fpr, tpr, thr = roc_curve(s, same)
    eer, _ = equal_error_rate(fpr, tpr, thr)
    dcf, _ = min_dcf(fpr, tpr, thr, p_target=0.01)
    return {"eer": eer, "min_dcf": dcf, "trials": int(s.size), "target_trials": int(same.sum())}


def train_encoder(waves, labels, *, steps: int, crop: int, batch: int, seed: int,
                  channels: int) -> SpeakerEncoder:
    torch.manual_seed(seed)
    x, y, _ = crop_dataset(waves, labels, crop, hop=crop // 2)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = SpeakerEncoder(dim=128, channels=channels)
    loss_fn = ArcFaceLoss(num_classes=int(y.max()) + 1, embedding_size=128, margin=11.5,
                          scale=30.0)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=2e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(y), size=batch, replace=False))
        gain = torch.empty(batch, 1).uniform_(0.5, 1.5)  # (B, 1) loudness augmentation
        xb = x[idx] * gain + 0.003 * torch.randn(batch, crop)  # (B, crop)
        loss = loss_fn(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  step {step:4d}/{steps} loss {loss.item():.3f}", flush=True)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-voices", default="awb,slt")
    ap.add_argument("--test-voices", default="rms,kal16")
    ap.add_argument("--shifts", default="-400,-200,0,200,400", help="sox pitch shifts, cents")
    ap.add_argument("--utts", type=int, default=12, help="utterances per pseudo-speaker")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=float, default=1.5, help="training crop, seconds")
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/speaker.json")
    args = ap.parse_args()
    for tool in ("flite", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y flite sox")
    torch.set_num_threads(int(os.environ.get("DMLKIT_THREADS", "2")))
    shifts = [int(c) for c in args.shifts.split(",")]
    tr_v, te_v = args.train_voices.split(","), args.test_voices.split(",")
    results: dict = {"args": vars(args), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        synthesize(Path(tmp, "train"), tr_v, shifts, args.utts, args.seed)
        synthesize(Path(tmp, "test"), te_v, shifts, args.utts, args.seed + 1)
        tr_w, tr_y, tr_names, _ = load_speaker_folder(Path(tmp, "train"))
        te_w, te_y, te_names, _ = load_speaker_folder(Path(tmp, "test"))
        results["data_s"] = time.perf_counter() - t0
    print(f"train: {len(tr_names)} pseudo-speakers, {len(tr_y)} utterances; "
          f"test: {len(te_names)} pseudo-speakers ({','.join(te_v)}), {len(te_y)} utterances; "
          f"data {results['data_s']:.1f}s", flush=True)
    real = np.array([n.endswith("_+0") for n in te_names])[te_y]  # unshifted test voices

    def evaluate(name: str, embed) -> None:
        t = time.perf_counter()
        with torch.no_grad():
            e = np.stack([embed(torch.from_numpy(w)).numpy() for w in te_w])  # (n, d)
        r = scores_eer(e, te_y)
        if real.any() and len(set(te_y[real])) > 1:
            r["eer_unshifted_only"] = scores_eer(e[real], te_y[real])["eer"]
        r["embed_s"] = time.perf_counter() - t
        results[name] = r
        print(f"{name}: {r}", flush=True)

    try:
        from dmlkit.models.pretrained import ResemblyzerEncoder
        evaluate("resemblyzer", ResemblyzerEncoder().embed_utterance)
    except ImportError as e:
        print(f"resemblyzer skipped: {e}")
    t = time.perf_counter()
    model = train_encoder(tr_w, tr_y, steps=args.steps, crop=int(args.crop * 16000),
                          batch=args.batch, seed=args.seed, channels=args.channels)
    results["dmlkit_train_s"] = time.perf_counter() - t
    evaluate("dmlkit_speaker_encoder", model.embed_utterance)
    evaluate("dmlkit_untrained", SpeakerEncoder(dim=128, channels=args.channels).eval()
             .embed_utterance)

    print("\n| encoder | EER | minDCF(0.01) | EER unshifted voices only | trials |")
    print("|---|---|---|---|---|")
    for k in ("resemblyzer", "dmlkit_speaker_encoder", "dmlkit_untrained"):
        if k in results:
            r = results[k]
            print(f"| {k} | {r['eer']:.3f} | {r['min_dcf']:.3f} | "
                  f"{r.get('eer_unshifted_only', float('nan')):.3f} | {r['trials']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    tmp_out.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

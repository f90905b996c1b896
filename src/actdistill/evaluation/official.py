"""Official formats: EPIC-KITCHENS-100 metrics and challenge JSON, Something-Something v2 predictions.

Why a module of its own: numbers for a paper table or a leaderboard must be computed exactly as
the benchmark's own scorer computes them, and test-split results can only be scored by the
benchmark's server, so the file it takes must be written exactly as it expects.

EPIC-KITCHENS-100 (action recognition, challenge C1), after the official scorer
``epic-kitchens/C1-Action-Recognition`` (``evaluate.py``, ``utils/metrics.py``,
``utils/scoring.py``, ``utils/challenge.py``):

- verb, noun and action top-1/top-5 accuracy over all segments; an action is the (verb, noun)
  pair, and the pairs are ranked by the product of the verb and noun softmax probabilities
  (the submitted scores are logits: the scorer applies the softmax);
- top-1 on the *unseen participants* subset (segments of participants absent from train; left
  out, as the official scorer does, when there are none) and on the *tail classes* subsets: tail
  verb accuracy on segments whose verb is a tail verb, tail noun accuracy on segments whose noun
  is a tail noun, tail action accuracy on segments whose verb **or** noun is a tail class;
- keys named as ``evaluate.py`` prints them (``all_action_accuracy_at_5``), values in %.

Class-mean recall (``all_{task}_class_mean_recall``) is this project's addition, not part of the
official output.

Submission JSON (``utils/challenge.make_action_recognition_submission``; the CodaLab C1 page)::

    {"version": "0.2", "challenge": "action_recognition", "sls_pt": 2, "sls_tl": 3, "sls_td": 4,
     "results": {"P01_101_0": {"verb": {"0": 1.223, ..., "96": 0.023},
                               "noun": {"0": 0.804, ..., "299": 0.023}}, ...}}

``sls_*`` are the Supervision Levels Scale levels (pretraining, training labels, training data),
each 0..5. The server takes a zip holding one ``test.json``; :func:`write_epic_submission`
writes that zip for a ``.zip`` path and bare JSON otherwise.

Something-Something v2: the 20BN evaluation server (now offline) took one line per video,
``<id>;<label>`` with the template text as label; we could not recover its exact top-5 form, so
the file here is that line extended to the five best labels, ``<id>;<label1>;...;<label5>``,
no header, ``;``-separated because templates contain commas. Its first two columns are the
top-1 form.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actdistill.data.records import Segment
from actdistill.evaluation.metrics import action_hits, class_mean_recall, topk_hits

EPIC_VERSION = "0.2"
EPIC_CHALLENGE = "action_recognition"
SLS_KEYS = ("sls_pt", "sls_tl", "sls_td")
SLS_LEVELS = range(0, 6)
EPIC_TASKS = ("verb", "noun", "action")
SSV2_TOP = 5


# ------------------------------------------------------------------------------ EPIC metrics
@dataclass(frozen=True)
class EpicGroundTruth:
    """Labels and subset membership of the segments scored, in one order.

    Why a record, not the segments: the scorer must be runnable on labels alone (a validation CSV,
    a test file), and the subsets must travel with the labels they were decided from.
    """

    ids: list[str]
    verb: torch.Tensor  # long [N]
    noun: torch.Tensor  # long [N]
    unseen: torch.Tensor  # bool [N]: the segment's participant is not in train
    tail_verb: torch.Tensor  # bool [N]: the segment's verb is a tail verb class
    tail_noun: torch.Tensor  # bool [N]

    @classmethod
    def from_segments(cls, segments: Sequence[Segment]) -> EpicGroundTruth:
        """From EPIC segments as the adapter builds them (``meta`` keys ``unseen_participant``,
        ``tail_verb``, ``tail_noun``); a missing key counts as False. Unlabelled segments (the
        test split) are refused: they can only be scored by the challenge server."""
        unlabelled = [s.uid for s in segments if s.labels.get("verb", -1) < 0 or s.labels.get("noun", -1) < 0]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} segments have no verb/noun label (first: {unlabelled[0]}); "
                             "an unlabelled split is scored by the challenge server, not here")

        def flag(key: str) -> torch.Tensor:
            return torch.tensor([bool(s.meta.get(key, False)) for s in segments], dtype=torch.bool)

        return cls(
            ids=[s.uid for s in segments],
            verb=torch.tensor([s.labels["verb"] for s in segments], dtype=torch.long),
            noun=torch.tensor([s.labels["noun"] for s in segments], dtype=torch.long),
            unseen=flag("unseen_participant"),
            tail_verb=flag("tail_verb"),
            tail_noun=flag("tail_noun"),
        )

    def take(self, ids: Sequence[str]) -> EpicGroundTruth:
        """The same ground truth reordered to ``ids``; every id must be known."""
        where = {u: i for i, u in enumerate(self.ids)}
        unknown = [u for u in ids if u not in where]
        if unknown:
            raise ValueError(f"{len(unknown)} ids have no ground truth (first: {unknown[0]})")
        idx = torch.tensor([where[u] for u in ids], dtype=torch.long)
        return EpicGroundTruth(list(ids), self.verb[idx], self.noun[idx], self.unseen[idx],
                               self.tail_verb[idx], self.tail_noun[idx])


def _accuracy(hits: torch.Tensor) -> float:
    return 100.0 * float(hits.float().mean())


def epic_metrics(verb_logits: torch.Tensor, noun_logits: torch.Tensor, gt: EpicGroundTruth) -> dict[str, float]:
    """The official EPIC-KITCHENS-100 action recognition numbers (see the module docstring), in %.

    ``verb_logits`` ``[N, V]`` and ``noun_logits`` ``[N, N_n]`` are in ``gt``'s order. Keys:
    ``all_{verb,noun,action}_accuracy_at_{1,5}``, ``tail_{...}_accuracy_at_1``,
    ``unseen_{...}_accuracy_at_1`` (only when there are unseen segments) and
    ``all_{verb,noun,action}_class_mean_recall``.
    """
    n = len(gt.ids)
    if n == 0:
        raise ValueError("need at least one segment to evaluate")
    if verb_logits.shape[0] != n or noun_logits.shape[0] != n:
        raise ValueError(f"{verb_logits.shape[0]} verb / {noun_logits.shape[0]} noun score rows for {n} segments")
    hits = {
        k: {"verb": topk_hits(verb_logits, gt.verb, k), "noun": topk_hits(noun_logits, gt.noun, k),
            "action": action_hits(verb_logits, noun_logits, gt.verb, gt.noun, k)}
        for k in (1, 5)
    }
    out: dict[str, float] = {}
    for task in EPIC_TASKS:
        for k in (1, 5):
            out[f"all_{task}_accuracy_at_{k}"] = _accuracy(hits[k][task])
    tail = {"verb": gt.tail_verb, "noun": gt.tail_noun, "action": gt.tail_verb | gt.tail_noun}
    for task in EPIC_TASKS:
        if tail[task].any():
            out[f"tail_{task}_accuracy_at_1"] = _accuracy(hits[1][task][tail[task]])
    if gt.unseen.any():
        for task in EPIC_TASKS:
            out[f"unseen_{task}_accuracy_at_1"] = _accuracy(hits[1][task][gt.unseen])
    num_nouns = noun_logits.shape[-1]
    pred_action = verb_logits.argmax(-1) * num_nouns + noun_logits.argmax(-1)
    action = gt.verb * num_nouns + gt.noun
    out["all_verb_class_mean_recall"] = class_mean_recall(verb_logits, gt.verb)
    out["all_noun_class_mean_recall"] = class_mean_recall(noun_logits, gt.noun)
    # the top-1 pair is (argmax verb, argmax noun): no [N, V*N_n] joint scores are needed
    out["all_action_class_mean_recall"] = _pair_mean_recall(pred_action, action)
    return out


def _pair_mean_recall(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """:func:`class_mean_recall` from predicted class ids instead of logits."""
    classes = labels.unique()
    return 100.0 * sum(float((pred[labels == c] == c).float().mean()) for c in classes) / len(classes)


# ------------------------------------------------------------------------------ EPIC submission
@dataclass(frozen=True)
class EpicSubmission:
    """A read challenge file: scores in the file's order and its supervision levels."""

    ids: list[str]
    verb: torch.Tensor  # float [N, V]
    noun: torch.Tensor  # float [N, N_n]
    sls: dict[str, int]


def _check_sls(sls: Mapping[str, Any], where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in SLS_KEYS:
        value = sls.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value not in SLS_LEVELS:
            raise ValueError(f"{where}: {key} must be an integer 0..5 (Supervision Levels Scale), got {value!r}")
        out[key] = value
    return out


def epic_submission(ids: Sequence[str], verb_scores: torch.Tensor, noun_scores: torch.Tensor,
                    sls_pt: int, sls_tl: int, sls_td: int) -> dict[str, Any]:
    """The challenge JSON object for these segments: per segment every verb and noun score, keyed
    by the class id as a string. Pass logits (what the model outputs): the server applies the
    softmax itself before ranking actions."""
    if len(ids) != verb_scores.shape[0] or len(ids) != noun_scores.shape[0]:
        raise ValueError(f"{len(ids)} ids for {verb_scores.shape[0]} verb / {noun_scores.shape[0]} noun score rows")
    if len(set(ids)) != len(ids):
        raise ValueError("segment ids are not unique")
    sls = _check_sls({"sls_pt": sls_pt, "sls_tl": sls_tl, "sls_td": sls_td}, "submission")
    verb, noun = verb_scores.detach().float().cpu().tolist(), noun_scores.detach().float().cpu().tolist()
    if not all(math.isfinite(x) for row in (*verb, *noun) for x in row):
        raise ValueError("scores contain NaN or infinity, which JSON cannot carry")
    results = {str(u): {"verb": {str(i): s for i, s in enumerate(v)}, "noun": {str(i): s for i, s in enumerate(nn)}}
               for u, v, nn in zip(ids, verb, noun)}
    return {"version": EPIC_VERSION, "challenge": EPIC_CHALLENGE, **sls, "results": results}


def write_epic_submission(path: str | Path, submission: Mapping[str, Any]) -> Path:
    """Write ``submission``: for a ``.zip`` path the zip of one ``test.json`` the server takes,
    else the bare JSON (to inspect, or to zip by hand)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(submission)
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("test.json", text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _score_table(entries: Mapping[str, Any], where: str) -> list[float]:
    if not isinstance(entries, Mapping) or not entries:
        raise ValueError(f"{where}: expected an object of class id -> score")
    if set(entries) != {str(i) for i in range(len(entries))}:
        raise ValueError(f"{where}: class ids must be \"0\"..\"{len(entries) - 1}\"")
    scores = [entries[str(i)] for i in range(len(entries))]
    if not all(isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise ValueError(f"{where}: scores must be finite numbers")
    return [float(s) for s in scores]


def read_epic_submission(path: str | Path) -> EpicSubmission:
    """Read and check a challenge file (bare JSON, or a zip holding ``test.json``). Why check:
    a malformed file is otherwise only found out after an upload, with the day's tries spent."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if "test.json" not in zf.namelist():
                raise ValueError(f"{path}: the zip holds no test.json (it holds {zf.namelist()})")
            raw = zf.read("test.json").decode("utf-8")
    else:
        raw = path.read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if data.get("version") != EPIC_VERSION or data.get("challenge") != EPIC_CHALLENGE:
        raise ValueError(f"{path}: version/challenge must be {EPIC_VERSION!r}/{EPIC_CHALLENGE!r}, got "
                         f"{data.get('version')!r}/{data.get('challenge')!r}")
    sls = _check_sls(data, str(path))
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise ValueError(f"{path}: 'results' must be a non-empty object of segment id -> scores")
    ids, verb, noun = [], [], []
    for uid, entry in results.items():
        if not isinstance(entry, dict) or "verb" not in entry or "noun" not in entry:
            raise ValueError(f"{path}: segment {uid} needs 'verb' and 'noun' scores")
        ids.append(uid)
        verb.append(_score_table(entry["verb"], f"{path}: {uid} verb"))
        noun.append(_score_table(entry["noun"], f"{path}: {uid} noun"))
    for name, rows in (("verb", verb), ("noun", noun)):
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}: segments have different numbers of {name} scores")
    return EpicSubmission(ids, torch.tensor(verb, dtype=torch.float32), torch.tensor(noun, dtype=torch.float32),
                          sls)


def score_epic_submission(path: str | Path, gt: EpicGroundTruth) -> dict[str, float]:
    """:func:`epic_metrics` of a challenge file against ``gt``; the file must score exactly the
    segments of ``gt``, as the server requires every test segment once."""
    sub = read_epic_submission(path)
    missing = sorted(set(gt.ids) - set(sub.ids))
    extra = sorted(set(sub.ids) - set(gt.ids))
    if missing or extra:
        raise ValueError(f"{path}: {len(missing)} segments missing (first: {missing[:1]}), "
                         f"{len(extra)} unknown (first: {extra[:1]})")
    return epic_metrics(sub.verb, sub.noun, gt.take(sub.ids))


# ------------------------------------------------------------------------------ SSv2 predictions
def write_ssv2_predictions(path: str | Path, ids: Sequence[str], logits: torch.Tensor, classes: Sequence[str],
                           top: int = SSV2_TOP) -> Path:
    """One line per video, ``<id>;<label1>;...;<label{top}>``, labels best first (see the module
    docstring for why this form)."""
    if len(ids) != logits.shape[0]:
        raise ValueError(f"{len(ids)} ids for {logits.shape[0]} score rows")
    if logits.shape[-1] != len(classes):
        raise ValueError(f"{logits.shape[-1]} scores per video for {len(classes)} classes")
    bad = [c for c in (*ids, *classes) if ";" in c or "\n" in c or "\r" in c]
    if bad:
        raise ValueError(f"{bad[0]!r} contains ';' or a line break, which the format cannot carry")
    best = logits.topk(min(top, len(classes)), dim=-1).indices.tolist()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [";".join([str(u), *(classes[j] for j in row)]) for u, row in zip(ids, best)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_ssv2_predictions(path: str | Path) -> dict[str, list[str]]:
    """Video id -> its labels, best first; blank lines skipped, repeated ids refused."""
    out: dict[str, list[str]] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        uid, *labels = line.split(";")
        if not uid or not labels:
            raise ValueError(f"{path}: line {n}: expected '<id>;<label>[;<label>...]'")
        if uid in out:
            raise ValueError(f"{path}: line {n}: video {uid} listed twice")
        out[uid] = labels
    return out


def score_ssv2_predictions(path: str | Path, ids: Sequence[str], labels: torch.Tensor,
                           classes: Sequence[str]) -> dict[str, float]:
    """``class_top1``/``class_top5`` (in %, named as :func:`actdistill.evaluation.metrics.score`
    names them) of a predictions file against class ids ``labels`` of videos ``ids``. A label
    text that is no class name is refused: a misspelt template would silently count as wrong."""
    if len(ids) == 0 or len(ids) != labels.shape[0] or bool((labels < 0).any()):
        raise ValueError(f"need one class id >= 0 per video ({len(ids)} ids, {labels.shape[0]} labels); "
                         "an unlabelled split is scored by the evaluation server, not here")
    preds = read_ssv2_predictions(path)
    missing = [u for u in ids if u not in preds]
    if missing:
        raise ValueError(f"{path}: {len(missing)} videos have no prediction (first: {missing[0]})")
    known = set(classes)
    unknown = sorted({lab for u in ids for lab in preds[u] if lab not in known})
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} labels are no class name (first: {unknown[0]!r})")
    truth = [classes[int(y)] for y in labels]
    top1 = [preds[u][0] == t for u, t in zip(ids, truth)]
    top5 = [t in preds[u][:SSV2_TOP] for u, t in zip(ids, truth)]
    return {"class_top1": 100.0 * sum(top1) / len(top1), "class_top5": 100.0 * sum(top5) / len(top5)}

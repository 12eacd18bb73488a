"""A corpus of hostile inputs run through the CLI of a given checkout, counted per category (issue 23).

    python benchmarks/hostile_corpus.py --repo /path/to/checkout [--jobs 2] [--timeout 10] [-k NAME]

Each case is a small generated setup (graph files, presets, run folders, dataset folders, a cache),
one `python -m kdgraph ...` command run as a subprocess with PYTHONPATH=REPO and a timeout, and the
clean outcome it should have: exit 2 with a located message (the file and line, `<command line>`, or
the path at fault), or exit 0 with the right effect. Every case also has a sentinel folder beside its
work folder (a user's files, a checkpoints/ folder, a plugin file that writes a marker when imported):
it must be unchanged afterwards and no marker may appear. Each case is counted as

    clean         the expected outcome
    traceback     a traceback, the CLI's last-resort "unexpected" line (exit 1), or a signal
    hang          over the timeout
    accepted-bad  exit 0 where an error was due, a wrong effect, a file touched outside, code run from data
    other         exit 2 that does not say where, or a good input refused

Categories follow the issue: wrong (silently wrong results), code (code from data), loss (data loss),
hang (hangs), crash (tracebacks and accepted nonsense). Output: one line per case, then the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import queue
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES = ["wrong", "code", "loss", "hang", "crash"]
STATUSES = ["clean", "traceback", "hang", "accepted-bad", "other"]
MARKER = "RAN"  # created in the sentinel folder by code that should never run
EVIL_PY = "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('imported')\n"

DEFAULTS = {
    "vars": "",
    "data": "{dataset: synthetic, size: 24, test_size: 8, image_size: 8, channels: 3, classes: 4, batch_size: 8}",
    "teacher": "{net: cnn, width: 4, frozen: true}",
    "student": "{net: cnn, width: 4}",
    "ce": "{loss: ce, from: data.label, to: student.logits, weight: 0.1}",
    "kd": "{loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}",
    "epochs": "1",
    "optimizer": "{type: sgd, lr: 0.05, momentum: 0.9}",
    "train_extra": "",
    "extra": "",
}


def graph(**changes: str) -> str:
    """The tiny synthetic KD graph (runs in about a second) with some of its values replaced by text."""
    v = {**DEFAULTS, **changes}
    return (
        f"kdgraph: 1\nname: tiny\n{v['vars']}data: {v['data']}\nnodes:\n  teacher: {v['teacher']}\n"
        f"  student: {v['student']}\nedges:\n  - {v['ce']}\n  - {v['kd']}\ntrain:\n  epochs: {v['epochs']}\n"
        f"  optimizer: {v['optimizer']}\n  log_every: 1\n  progress: false\n{v['train_extra']}{v['extra']}"
        "deploy: student.logits\n"
    )


@dataclass
class Case:
    name: str
    category: str
    argv: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative to work/ ('../outside/x' allowed)
    setup: Callable[[Path, Path], None] | None = None  # (work, outside) after files are written
    expect: str = "error"  # error | ok | any
    where: str = r""  # a regex the first error line must match (default: a located line)
    bad_output: str = ""  # a regex stdout must not match when it exits 0 (a wrong value accepted)
    needs_run: bool = False  # a copy of the finished base run at work/run
    timeout: float | None = None


LOCATED = re.compile(r"^(<command line>|\S[^:\n]*):(\d+:)?\s")
G = r"g\.yaml:\d+"  # a graph-file problem names the file and its line
CMD = r"<command line>|g\.yaml:\d+"


# ---- helpers for setups ------------------------------------------------------------------------------------


def fifo(rel: str) -> Callable[[Path, Path], None]:
    def make(work: Path, outside: Path) -> None:
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        os.mkfifo(p)

    return make


def link(rel: str, target: str) -> Callable[[Path, Path], None]:
    """work/rel becomes a symlink to target ('OUT/...' is inside the sentinel folder)."""

    def make(work: Path, outside: Path) -> None:
        p = work / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target.replace("OUT", str(outside)))

    return make


def edit_json(rel: str, fn: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def make(work: Path, outside: Path) -> None:
        p = work / rel
        value = fn(json.loads(p.read_text()))
        p.write_text(value if isinstance(value, str) else json.dumps(value))

    return make


def write(rel: str, content: str | bytes) -> Callable[[Path, Path], None]:
    def make(work: Path, outside: Path) -> None:
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.is_file():
            p.unlink()
        data = content.replace("OUT", str(outside)) if isinstance(content, str) else content
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    return make


def chain(*steps: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def make(work: Path, outside: Path) -> None:
        for s in steps:
            s(work, outside)

    return make


def evil_pickle(outside_marker: str = "OUT/RAN") -> bytes:
    """A pickle that runs `touch OUT/RAN` when unpickled (GLOBAL os.system + REDUCE)."""
    cmd = f"touch {outside_marker}".encode()
    return b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(cmd)) + cmd + b"q\x01\x85q\x02Rq\x03."


def evil_pickle_setup(rel: str) -> Callable[[Path, Path], None]:
    def make(work: Path, outside: Path) -> None:
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            p.unlink()
        p.write_bytes(evil_pickle(f"{outside}/{MARKER}"))

    return make


def png(color: int = 100) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 20, 200)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def image_folder(bad: bytes | None = None, bad_name: str = "bad.png") -> Callable[[Path, Path], None]:
    def make(work: Path, outside: Path) -> None:
        for split in ("train", "val"):
            for c in range(2):
                folder = work / "data" / split / f"c{c}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(3):
                    (folder / f"ok{i}.png").write_bytes(png(40 * i + c))
        if bad is not None:
            (work / "data" / "train" / "c0" / bad_name).write_bytes(bad)

    return make


IMAGES = "{dataset: imagefolder, root: data, image_size: 8, batch_size: 4, loader: torchvision}"


def cifar(**damage: object) -> Callable[[Path, Path], None]:
    """A fake CIFAR-10 folder of 8-image batches; damage={'data_batch_1': entry or bytes or 'fifo'}."""
    import numpy as np

    def make(work: Path, outside: Path) -> None:
        where = work / "data" / "cifar-10-batches-py"
        where.mkdir(parents=True, exist_ok=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            entry = damage.get(name)
            if entry == "fifo":
                os.mkfifo(where / name)
                continue
            if entry == "evil":
                (where / name).write_bytes(evil_pickle(f"{outside}/{MARKER}"))
                continue
            if isinstance(entry, bytes):
                (where / name).write_bytes(entry)
                continue
            if entry is None:
                images = np.random.default_rng(len(name)).integers(0, 255, (8, 3072), dtype=np.uint8)
                entry = {b"data": images, b"labels": [i % 10 for i in range(8)]}
            (where / name).write_bytes(pickle.dumps(entry, protocol=2))
        (where / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}))

    return make


def cifar_entry(labels: object = None, images: object = None, **extra: object) -> dict:
    import numpy as np

    imgs = np.random.default_rng(1).integers(0, 255, (8, 3072), dtype=np.uint8) if images is None else images
    return {b"data": imgs, b"labels": list(range(8)) if labels is None else labels, **extra}


CIFAR = "{dataset: cifar10, root: data, batch_size: 4}"
RUNG = graph(data=CIFAR)


def shared_refs() -> dict:
    shared: list = [0, 1]
    for _ in range(60):
        shared = [shared, shared]
    return cifar_entry(extra=shared) | {b"extra": shared}


def laughs(depth: int = 9) -> str:
    levels = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth):
        levels.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "[" + ", ".join(levels) + "]"


def diamonds(n: int = 48) -> dict[str, str]:
    """n files in pairs, each pair extending both files of the pair below: 2^(n/2) paths to the base."""
    files = {"base.yaml": graph()}
    below = ["base.yaml"]
    for layer in range(n // 2):
        names = [f"d{layer}_{j}.yaml" for j in range(2)]
        for j, name in enumerate(names):
            files[name] = f"extends: {below}\nvars: {{k{layer}_{j}: {layer}}}\n"
        below = names
    files["g.yaml"] = f"extends: {below}\nname: top\n"
    return files


def vars_chain(n: int = 2000) -> str:
    lines = "".join(f"  v{i}: '${{v{i - 1} + 1}}'\n" for i in range(1, n))
    return graph(
        vars="vars:\n  v0: 1\n" + lines,
        kd=f"{{loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: '${{v{n - 1} / {n}}}'}}",
    )


def pair_graph(pairs: str) -> str:
    return graph(extra=f"pairs: {pairs}\n")


def cache_entry(rel: str, files: dict[str, bytes]) -> Callable[[Path, Path], None]:
    """A folder of the user's own inside the cache ($KDGRAPH_CACHE = work/cache)."""

    def make(work: Path, outside: Path) -> None:
        for name, blob in files.items():
            p = work / "cache" / rel / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob)

    return make


def spec_plugins(work: Path, outside: Path) -> None:
    with (work / "run" / "spec.yaml").open("a") as fh:
        fh.write(f"plugins: [{outside / 'evil.py'}]\n")


def final_plugins(work: Path, outside: Path) -> None:
    """final.pt's recorded spec names the sentinel plugin (the harness rewrites its own file with torch)."""
    import torch

    path = work / "run" / "final.pt"
    state = torch.load(path, weights_only=False)
    spec = state.get("spec") if isinstance(state, dict) else None
    if isinstance(spec, dict):
        spec["plugins"] = [str(outside / "evil.py")]
    torch.save(state, path)


def model_plugins(work: Path, outside: Path) -> None:
    """An export whose record names the sentinel plugin."""
    import torch

    path = work / "run" / "model.pt"
    state = torch.load(path, weights_only=False)

    def walk(obj: object) -> None:
        if isinstance(obj, dict):
            if "plugins" in obj and "spec" in obj:
                obj["plugins"] = [str(outside / "evil.py")]
                obj["base_dir"] = str(outside)
            for v in list(obj.values()):
                walk(v)

    walk(state)
    torch.save(state, path)


def newest_ckpt(work: Path) -> Path:
    return max((work / "run" / "checkpoints").glob("step-*.pt"))


def ckpt_evil(work: Path, outside: Path) -> None:
    newest_ckpt(work).write_bytes(evil_pickle(f"{outside}/{MARKER}"))


def resume_source_evil(work: Path, outside: Path) -> None:
    (outside / "g_evil.yaml").write_text(graph(extra=f"plugins: [{outside / 'evil.py'}]\n"))
    info = json.loads((work / "run" / "run.json").read_text())
    info["source"] = str(outside / "g_evil.yaml")
    (work / "run" / "run.json").write_text(json.dumps(info))


def other_run_checkpoints(work: Path, outside: Path) -> None:
    """work/run/checkpoints -> OUT/other_run/checkpoints (another run's, with files of its own)."""
    other = outside / "other_run" / "checkpoints"
    shutil.copytree(work / "run" / "checkpoints", other)
    shutil.rmtree(work / "run" / "checkpoints")
    (work / "run" / "checkpoints").symlink_to(other)


def user_out_folder(*names: str) -> Callable[[Path, Path], None]:
    """work/out: a finished kdgraph run (when the case has one) plus files of the user's own, hashed for the check."""

    def make(work: Path, outside: Path) -> None:
        if (work / "run").is_dir():
            (work / "run").rename(work / "out")
        for name in names:
            p = work / "out" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"the user's {name}\n")
        kept = {n: hashlib.sha256((work / "out" / n).read_bytes()).hexdigest() for n in names}
        (outside / "out_hashes.json").write_text(json.dumps(kept))

    return make


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def out_kept(work: Path, outside: Path) -> str | None:
    """After the command: every user file recorded in OUT/out_hashes.json is still in work/out, unchanged."""
    want = json.loads((outside / "out_hashes.json").read_text())
    have = hashes(work / "out") if (work / "out").is_dir() else {}
    lost = [k for k, v in want.items() if have.get(k) != v]
    return f"user files lost or changed: {lost}" if lost else None


def cache_kept(rel_files: list[str]) -> Callable[[Path, Path], str | None]:
    def check(work: Path, outside: Path) -> str | None:
        lost = [r for r in rel_files if not (work / "cache" / r).exists()]
        return f"cache clear removed the user's {lost}" if lost else None

    return check


# ---- the corpus ----------------------------------------------------------------------------------------------


def corpus() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, category: str, argv: list[str], **kw: object) -> None:
        cases.append(Case(name, category, argv, **kw))  # type: ignore[arg-type]

    V = ["validate", "g.yaml"]
    R = ["run", "g.yaml", "--out", "r", "-q"]
    # -- wrong: silently wrong results (values, YAML 1.1 ints, data arrays)
    res = ["validate", "g.yaml", "--resolved", "--no-dry-run"]
    add(
        "octal_width",
        "wrong",
        res,
        files={"g.yaml": graph(student="{net: cnn, width: 010}")},
        expect="any",
        where=G,
        bad_output=r"width: 8\b",
    )
    add(
        "base60_epochs",
        "wrong",
        res,
        files={"g.yaml": graph(epochs="1:30")},
        expect="any",
        where=G,
        bad_output=r"epochs: 90\b",
    )
    add(
        "octal_override",
        "wrong",
        res + ["nodes.student.width=010"],
        files={"g.yaml": graph()},
        expect="any",
        where=CMD,
        bad_output=r"width: 8\b",
    )
    add(
        "base60_override",
        "wrong",
        res + ["train.epochs=1:30"],
        files={"g.yaml": graph()},
        expect="any",
        where=CMD,
        bad_output=r"epochs: 90\b",
    )
    add(
        "underscore_int",
        "wrong",
        res,
        files={"g.yaml": graph(epochs="1_0")},
        expect="any",
        where=G,
        bad_output=r"epochs: 10\b",
    )
    add("yaml11_bool_on", "wrong", V, files={"g.yaml": graph(teacher="{net: cnn, width: 4, frozen: on}")}, where=G)
    for what, text in [
        ("lr_nan", "{type: sgd, lr: .nan}"),
        ("lr_inf", "{type: sgd, lr: .inf}"),
        ("momentum_nan", "{type: sgd, lr: 0.05, momentum: .nan}"),
        ("weight_decay_inf", "{type: sgd, lr: 0.05, weight_decay: .inf}"),
        ("lr_1e999", "{type: sgd, lr: 1e999}"),
    ]:
        add(what, "wrong", V, files={"g.yaml": graph(optimizer=text)}, where=G)
    for what, kd in [
        ("T_nan", "T: .nan"),
        ("T_zero", "T: 0"),
        ("T_negative", "T: -4"),
        ("T_inf", "T: .inf"),
        ("weight_nan", "weight: .nan, T: 4"),
        ("weight_neg_inf", "weight: -.inf, T: 4"),
        ("T_expr_inf", "T: '${1e308 * 10}'"),
        ("weight_expr_nan", "weight: '${1e999 - 1e999}', T: 4"),
        ("weight_schedule_nan", "weight: {value: .nan, warmup: 2}, T: 4"),
        ("weight_schedule_neg_warmup", "weight: {value: 1, warmup: -3}, T: 4"),
        ("T_string", "T: abc"),
    ]:
        body = kd if "weight" in kd else f"weight: 0.9, {kd}"
        add(
            what,
            "wrong",
            V,
            files={"g.yaml": graph(kd=f"{{loss: kd, from: teacher.logits, to: student.logits, {body}}}")},
            where=G,
        )
    add("lr_override_nan", "wrong", V + ["train.optimizer.lr=.nan"], files={"g.yaml": graph()}, where=CMD)
    add("T_override_zero", "wrong", V + ["edges[1].T=0"], files={"g.yaml": graph()}, where=CMD)
    add(
        "vars_nan",
        "wrong",
        V,
        files={
            "g.yaml": graph(
                vars="vars: {T: .nan}\n",
                kd="{loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: '${T}'}",
            )
        },
        where=G,
    )
    base_data = DEFAULTS["data"][:-1]
    add("std_zero", "wrong", V, files={"g.yaml": graph(data=base_data + ", std: [0, 0, 0]}")}, where=G)
    add("std_nan", "wrong", V, files={"g.yaml": graph(data=base_data + ", std: [.nan, 1, 1]}")}, where=G)
    add("mean_inf", "wrong", V, files={"g.yaml": graph(data=base_data + ", mean: [.inf, 0, 0]}")}, where=G)
    add("top1_on_feature", "wrong", V, files={"g.yaml": graph(train_extra="  eval: [student.feat1]\n")}, where=G)
    add("zero_steps", "wrong", R, files={"g.yaml": graph(epochs="0")}, where=G)
    add(
        "batch_zero",
        "wrong",
        V,
        files={"g.yaml": graph(data=base_data.replace("batch_size: 8", "batch_size: 0") + "}")},
        where=G,
    )
    add(
        "classes_zero",
        "wrong",
        V,
        files={"g.yaml": graph(data=base_data.replace("classes: 4", "classes: 0") + "}")},
        where=G,
    )
    add(
        "gamma_nan",
        "wrong",
        V,
        files={"g.yaml": graph(train_extra="  lr_schedule: {type: step, milestones: [1], gamma: .nan}\n")},
        where=G,
    )
    add(
        "milestones_inf",
        "wrong",
        V,
        files={"g.yaml": graph(train_extra="  lr_schedule: {type: step, milestones: [.inf]}\n")},
        where=G,
    )
    add(
        "mix_weights_nan",
        "wrong",
        V,
        files={
            "g.yaml": graph(
                extra="",
                kd="{loss: kd, from: mixed.out, to: student.logits, weight: 0.9, T: 4}",
                teacher="{net: cnn, width: 4, frozen: true}\n  mixed: {op: mix, in: [teacher.logits, teacher.logits], "
                "weights: [.nan, 0.5]}",
            )
        },
        where=G,
    )
    cif = "data_batch_1"
    add(
        "cifar_3_labels_8_images",
        "wrong",
        R,
        files={"g.yaml": RUNG},
        setup=cifar(**{cif: cifar_entry(labels=[0, 1, 2])}),
        where=cif,
    )
    add(
        "cifar_float_labels",
        "wrong",
        R,
        files={"g.yaml": RUNG},
        setup=cifar(**{cif: cifar_entry(labels=[i + 0.7 for i in range(8)])}),
        where=cif,
    )
    add(
        "cifar_label_out_of_range",
        "wrong",
        R,
        files={"g.yaml": RUNG},
        setup=cifar(**{cif: cifar_entry(labels=[10] * 8)}),
        where=cif,
    )
    add(
        "cifar_negative_labels",
        "wrong",
        R,
        files={"g.yaml": RUNG},
        setup=cifar(**{cif: cifar_entry(labels=[-1] * 8)}),
        where=cif,
    )

    def float_images() -> dict:
        import numpy as np

        return cifar_entry(images=np.full((8, 3072), 1e300))

    add("cifar_float_images", "wrong", R, files={"g.yaml": RUNG}, setup=cifar(**{cif: float_images()}), where=cif)

    # -- code: nothing a run folder, an export, a checkpoint or a data file names is imported or unpickled as code
    for cmd, argv in [
        ("draw", ["draw", "run", "--format", "dot"]),
        ("report", ["report", "run"]),
        ("eval", ["eval", "run"]),
        ("export", ["export", "run", "--no-torchscript"]),
    ]:
        add(f"spec_plugins_{cmd}", "code", argv, needs_run=True, setup=spec_plugins, expect="any", where="run")
        add(f"final_plugins_{cmd}", "code", argv, needs_run=True, setup=final_plugins, expect="any", where="run")
    add(
        "resume_source_plugins",
        "code",
        ["run", "--resume", "run", "-q"],
        needs_run=True,
        setup=resume_source_evil,
        expect="any",
        where="run",
    )
    add(
        "resume_spec_plugins",
        "code",
        ["run", "--resume", "run", "-q"],
        needs_run=True,
        setup=spec_plugins,
        expect="any",
        where="run",
    )
    add(
        "runjson_plugins_draw",
        "code",
        ["draw", "run", "--format", "dot"],
        needs_run=True,
        expect="any",
        where="run",
        setup=edit_json("run/run.json", lambda d: d | {"plugins": ["../outside/evil.py"]}),
    )
    add(
        "export_model_plugins_eval",
        "code",
        ["eval", "run/model.pt", "--data", "synthetic"],
        needs_run=True,
        setup=model_plugins,
        expect="any",
        where="model.pt",
    )
    add(
        "final_pt_pickle_export",
        "code",
        ["export", "run", "--no-torchscript"],
        needs_run=True,
        setup=evil_pickle_setup("run/final.pt"),
        where="final.pt",
    )
    add(
        "final_pt_pickle_eval",
        "code",
        ["eval", "run"],
        needs_run=True,
        setup=evil_pickle_setup("run/final.pt"),
        where="final.pt",
    )
    add(
        "model_pt_pickle_eval",
        "code",
        ["eval", "evil.pt", "--data", "synthetic"],
        setup=evil_pickle_setup("evil.pt"),
        where="evil.pt",
    )
    add(
        "init_checkpoint_pickle",
        "code",
        V,
        files={"g.yaml": graph(teacher="{net: cnn, width: 4, frozen: true, init: {checkpoint: evil.pt}}")},
        setup=evil_pickle_setup("evil.pt"),
        where="evil.pt",
    )
    add(
        "resume_checkpoint_pickle",
        "code",
        ["run", "--resume", "run", "-q"],
        needs_run=True,
        setup=ckpt_evil,
        expect="any",
        where="run",
    )
    add("cifar_pickle_os_system", "code", R, files={"g.yaml": RUNG}, setup=cifar(**{cif: "evil"}), where=cif)
    add(
        "yaml_python_tag",
        "code",
        V,
        files={"g.yaml": graph(epochs="!!python/object/apply:os.system ['touch ../outside/RAN']")},
        where=G,
    )
    add(
        "spec_yaml_python_tag",
        "code",
        ["draw", "run", "--format", "dot"],
        needs_run=True,
        expect="any",
        where="run",
        setup=write("run/spec.yaml", "kdgraph: !!python/object/apply:os.system ['touch OUT/RAN']\n"),
    )
    add(
        "expr_import", "code", V, files={"g.yaml": graph(epochs='\'${__import__("os").system("touch RAN")}\'')}, where=G
    )
    add(
        "extends_python_tag",
        "code",
        V,
        files={
            "p.yaml": "name: !!python/name:os.system\n",
            "g.yaml": "extends: [p.yaml]\n" + graph()[len("kdgraph: 1\n") :],
        },
        where=r"\.yaml:\d+",
    )
    add(
        "preset_python_tag",
        "code",
        V + ["--preset", "p.yaml"],
        files={
            "g.yaml": graph(),
            "p.yaml": "kdgraph_preset: 1\ndata: !!python/object/apply:os.system ['touch ../outside/RAN']\n",
        },
        where=r"p\.yaml:\d+",
    )

    # -- loss: kdgraph deletes only what it wrote (cache clear, --force, --resume through links)
    C = ["cache", "clear"]
    for marker in ("run.json", "final.pt", "checkpoints/mine.pt", "cache.json"):
        name = f"cache_clear_user_{marker.replace('/', '_').replace('.', '_')}"
        cases.append(
            Case(
                name,
                "loss",
                C,
                setup=cache_entry("myproject", {marker: b"the user's", "notes.txt": b"keep"}),
                expect="any",
            )
        )
        CHECKS[name] = cache_kept([f"myproject/{marker}", "myproject/notes.txt"])
    cases.append(
        Case(
            "cache_clear_user_outputs",
            "loss",
            C,
            expect="any",
            setup=cache_entry("outputs/mine", {"cache.json": b"{}", "values.bin": b"x"}),
        )
    )
    CHECKS["cache_clear_user_outputs"] = cache_kept(["outputs/mine/values.bin"])
    cases.append(
        Case("cache_clear_user_meta", "loss", C, expect="any", setup=cache_entry("meta", {"mine.json": b"{}"}))
    )
    CHECKS["cache_clear_user_meta"] = cache_kept(["meta/mine.json"])
    cases.append(Case("cache_clear_link_out", "loss", C, expect="any", setup=link("cache/linked", "OUT")))
    cases.append(Case("cache_clear_cache_is_link", "loss", C, expect="any", setup=link("cache", "OUT")))
    for name, files in [
        ("force_user_checkpoint", ["checkpoints/mine.pt"]),
        ("force_user_notes", ["notes.txt"]),
        ("force_user_runjson", ["run.json", "results.csv"]),
        ("force_user_final", ["final.pt", "metrics.jsonl", "paper.tex"]),
    ]:
        cases.append(
            Case(
                name,
                "loss",
                ["run", "g.yaml", "--out", "out", "--force", "-q"],
                files={"g.yaml": graph()},
                setup=user_out_folder(*files),
                expect="any",
                where="out",
                needs_run=True,
            )
        )
        CHECKS[name] = out_kept
    cases.append(
        Case(
            "no_force_user_folder",
            "loss",
            ["run", "g.yaml", "--out", "out", "-q"],
            files={"g.yaml": graph()},
            setup=user_out_folder("notes.txt"),
            where="out",
        )
    )
    CHECKS["no_force_user_folder"] = out_kept
    cases.append(
        Case(
            "force_checkpoints_link_out",
            "loss",
            ["run", "g.yaml", "--out", "out", "--force", "-q"],
            files={"g.yaml": graph()},
            setup=chain(user_out_folder("notes.txt"), link("out/checkpoints", "OUT/checkpoints")),
            expect="any",
            where="out",
            needs_run=True,
        )
    )
    cases.append(
        Case(
            "force_final_link_out",
            "loss",
            ["run", "g.yaml", "--out", "out", "--force", "-q"],
            files={"g.yaml": graph()},
            setup=chain(user_out_folder("notes.txt"), link("out/final.pt", "OUT/final.pt")),
            expect="any",
            where="out",
            needs_run=True,
        )
    )
    cases.append(
        Case(
            "force_out_is_link",
            "loss",
            ["run", "g.yaml", "--out", "out", "--force", "-q"],
            files={"g.yaml": graph()},
            setup=link("out", "OUT"),
            expect="any",
            where="out",
        )
    )
    cases.append(
        Case(
            "force_out_is_cwd",
            "loss",
            ["run", "g.yaml", "--out", ".", "--force", "-q"],
            files={"g.yaml": graph(), "mine.txt": "the user's"},
            expect="any",
            where=r"^\.|\. is",
        )
    )
    CHECKS["force_out_is_cwd"] = lambda w, o: (
        None if (w / "mine.txt").exists() and (w / "g.yaml").exists() else ("--out . --force removed the user's files")
    )
    cases.append(
        Case(
            "resume_checkpoints_link",
            "loss",
            ["run", "--resume", "run", "-q"],
            needs_run=True,
            setup=other_run_checkpoints,
            expect="any",
        )
    )
    cases.append(
        Case(
            "resume_latest_previous_out",
            "loss",
            ["run", "--resume", "run", "-q"],
            needs_run=True,
            setup=edit_json("run/checkpoints/latest.json", lambda d: d | {"previous": "../../../outside/final.pt"}),
            expect="any",
        )
    )
    cases.append(
        Case(
            "resume_latest_file_out",
            "loss",
            ["run", "--resume", "run", "-q"],
            needs_run=True,
            setup=edit_json("run/checkpoints/latest.json", lambda d: d | {"file": "../../../outside/final.pt"}),
            expect="any",
        )
    )
    cases.append(
        Case(
            "resume_step_link_out",
            "loss",
            ["run", "--resume", "run", "-q"],
            needs_run=True,
            setup=lambda w, o: link(str(newest_ckpt(w).relative_to(w)), "OUT/checkpoints/mine.pt")(w, o),
            expect="any",
        )
    )

    # -- hang: FIFOs, exponential extends, cubic vars, nested merges, pickles walked forever, huge work
    add("fifo_graph", "hang", ["validate", "fifo.yaml"], setup=fifo("fifo.yaml"), where="fifo.yaml")
    add(
        "fifo_extends",
        "hang",
        V,
        files={"g.yaml": "extends: [fifo.yaml]\nname: x\n"},
        setup=fifo("fifo.yaml"),
        where="fifo.yaml",
    )
    add(
        "fifo_preset",
        "hang",
        V + ["--preset", "fifo.yaml"],
        files={"g.yaml": graph()},
        setup=fifo("fifo.yaml"),
        where="fifo.yaml",
    )
    add(
        "fifo_plugin",
        "hang",
        V,
        files={"g.yaml": graph(extra="plugins: [fifo.py]\n")},
        setup=fifo("fifo.py"),
        where="fifo.py",
    )
    add(
        "fifo_init_checkpoint",
        "hang",
        V,
        files={"g.yaml": graph(teacher="{net: cnn, width: 4, frozen: true, init: {checkpoint: fifo.pt}}")},
        setup=fifo("fifo.pt"),
        where="fifo.pt",
    )
    for rel, argv in [
        ("run/run.json", ["report", "run"]),
        ("run/spec.yaml", ["draw", "run", "--format", "dot"]),
        ("run/metrics.jsonl", ["report", "run"]),
        ("run/summary.json", ["report", "run"]),
        ("run/checkpoints/latest.json", ["run", "--resume", "run", "-q"]),
        ("run/final.pt", ["export", "run", "--no-torchscript"]),
        ("run/final.pt", ["eval", "run"]),
        ("run/run.json", ["run", "--resume", "run", "-q"]),
        ("run/metrics.jsonl", ["draw", "run", "--format", "dot"]),
        ("run/metrics.jsonl", ["plot", "run", "-o", "p.png"]),
    ]:
        add(
            f"fifo_{rel.split('/')[-1].replace('.', '_')}_{argv[0]}",
            "hang",
            argv,
            needs_run=True,
            setup=fifo(rel),
            where=r"run",
            expect="any",
        )
    add("fifo_cifar_batch", "hang", R, files={"g.yaml": RUNG}, setup=cifar(**{cif: "fifo"}), where=cif)
    add(
        "fifo_image",
        "hang",
        R,
        files={"g.yaml": graph(data=IMAGES)},
        setup=chain(image_folder(), fifo("data/train/c0/fifo.png")),
        where="fifo.png",
    )

    def fifo_meta(work: Path, outside: Path) -> None:
        meta = work / "cache" / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        for p in list(meta.glob("*.json")) or [meta / "netinfo.json"]:
            p.unlink(missing_ok=True)
            os.mkfifo(p)

    add("fifo_cache_meta", "hang", ["list", "nets"], setup=fifo_meta, needs_run=True, expect="any", where="meta")
    add("extends_48_diamonds", "hang", ["validate", "g.yaml", "--no-dry-run"], files=diamonds(48), expect="ok")
    add(
        "vars_2000_chain",
        "hang",
        ["validate", "g.yaml", "--no-dry-run"],
        files={"g.yaml": vars_chain(2000)},
        expect="ok",
    )
    add(
        "merge_in_merge",
        "hang",
        V,
        files={"g.yaml": graph(extra="notes: " + "{<<: " * 30 + laughs(6) + "}" * 30 + "\n")},
        where=G,
    )
    add("billion_laughs", "hang", V, files={"g.yaml": graph(extra=f"notes: {laughs(9)}\n")}, where=G)
    add("alias_laughs_in_vars", "hang", V, files={"g.yaml": graph(vars=f"vars: {{x: {laughs(9)}}}\n")}, where=G)
    add("cifar_shared_refs", "hang", R, files={"g.yaml": RUNG}, setup=cifar(**{cif: shared_refs()}), where=cif)
    add(
        "randaugment_1e9",
        "hang",
        R,
        files={"g.yaml": graph(data=base_data + ", augment: [{randaugment: {num_ops: 1000000000}}]}")},
        where=G,
    )
    add("expr_power_tower", "hang", V, files={"g.yaml": graph(epochs="'${9 ** 9 ** 9}'")}, where=G)
    add(
        "deep_nesting",
        "hang",
        V,
        files={"g.yaml": graph(extra="notes: " + "[" * 100_000 + "]" * 100_000 + "\n")},
        where=G,
    )
    add("huge_width_dry_run", "hang", V, files={"g.yaml": graph(student="{net: cnn, width: 1000000}")}, where=G)
    add(
        "huge_image_size",
        "hang",
        V,
        files={"g.yaml": graph(data=base_data.replace("image_size: 8", "image_size: 200000") + "}")},
        where=G,
    )
    add(
        "extends_300_chain",
        "hang",
        ["validate", "g.yaml", "--no-dry-run"],
        expect="ok",
        files={
            "e0.yaml": graph(),
            **{f"e{i}.yaml": f"extends: [e{i - 1}.yaml]\nvars: {{k{i}: {i}}}\n" for i in range(1, 300)},
            "g.yaml": "extends: [e299.yaml]\nname: chain\n",
        },
    )
    add(
        "extends_cycle",
        "hang",
        V,
        files={"a.yaml": "extends: [b.yaml]\n", "b.yaml": "extends: [a.yaml]\n", "g.yaml": "extends: [a.yaml]\n"},
        where=r"\.yaml",
    )
    add(
        "vars_2000_cycle",
        "hang",
        ["validate", "g.yaml", "--no-dry-run"],
        files={"g.yaml": vars_chain(2000).replace("v0: 1", "v0: '${v1999}'")},
        where=G,
    )
    add("dev_zero_graph", "hang", ["validate", "/dev/zero"], where="/dev/zero")

    # -- crash: tracebacks and accepted nonsense
    for how, blob in [
        ("zero_byte", b""),
        ("truncated", png()[:30]),
        ("random", bytes(range(64))),
        ("bomb", png_bomb()),
        ("text", b"not an image\n"),
    ]:
        add(f"image_{how}", "crash", R, files={"g.yaml": graph(data=IMAGES)}, setup=image_folder(blob), where="bad.png")
    add(
        "image_workers_zero_byte",
        "crash",
        R,
        files={"g.yaml": graph(data=IMAGES[:-1] + ", workers: 1}")},
        setup=image_folder(b""),
        where="bad.png",
    )
    for what, changes in [
        ("epochs", {"epochs": "1" + "0" * 30}),
        ("width", {"student": "{net: cnn, width: 1" + "0" * 30 + "}"}),
        ("batch", {"data": base_data.replace("batch_size: 8", "batch_size: 1" + "0" * 30) + "}"}),
        ("seed", {"train_extra": "  seed: 1" + "0" * 30 + "\n"}),
        ("digits", {"epochs": "9" * 5000}),
    ]:
        add(f"huge_int_{what}", "crash", V, files={"g.yaml": graph(**changes)}, where=G)
    for what, ov in [
        ("index_99", "edges[5].weight=1"),
        ("index_neg", "edges[-9].T=2"),
        ("index_huge", "edges[99999999999999999999].T=1"),
        ("into_scalar", "nodes.student.net.x=1"),
        ("add_nan_node", "+nodes.x={net: cnn, width: .nan}"),
        ("empty_key", "=1"),
        ("remove_nodes", "~nodes"),
        ("nested_value", "train.epochs=" + "[" * 5000 + "]" * 5000),
    ]:
        add(f"override_{what}", "crash", V + [ov], files={"g.yaml": graph()}, where=CMD)
    for what, text in [
        ("list", "[1, 2]\n"),
        ("nets_list", "kdgraph_preset: 1\nnets: [1]\n"),
        ("data_int", "kdgraph_preset: 1\ndata: 5\n"),
        ("stage_epochs_neg", "kdgraph_preset: 1\nstage_epochs: -1\n"),
        ("vars_str", "kdgraph_preset: 1\nvars: x\n"),
        ("graphs_int", "kdgraph_preset: 1\ngraphs: {tiny: 5}\n"),
        ("optimizer_int", "kdgraph_preset: 1\ntrain: {optimizer: 5}\n"),
        ("net_int", "kdgraph_preset: 1\nnets: {cnn: 5}\n"),
        ("empty", ""),
        ("epochs_nan", "kdgraph_preset: 1\ntrain: {epochs: .nan}\n"),
    ]:
        add(
            f"preset_{what}",
            "crash",
            V + ["--preset", "p.yaml"],
            files={"g.yaml": graph(), "p.yaml": text},
            where=r"p\.yaml|<command line>|g\.yaml",
        )
    for what, pairs, argv in [
        ("list", "[1]", ["list", "pairs", "g.yaml"]),
        ("int", "{a: 5}", V + ["--pair", "a"]),
        ("nodes_int", "{a: {nodes: 3}}", V + ["--pair", "a"]),
        ("vars_list", "{a: {vars: [1]}}", V + ["--pair", "a"]),
        ("list_int", "{a: 5}", ["list", "pairs", "g.yaml"]),
        ("unknown_node", "{a: {nodes: {zz: {net: cnn}}}}", V + ["--pair", "a"]),
    ]:
        add(f"pairs_{what}_{argv[0]}", "crash", argv, files={"g.yaml": pair_graph(pairs)}, where=G)
    add("pair_missing", "crash", V + ["--pair", "nope"], files={"g.yaml": graph()}, where=r"g\.yaml|pair")
    for what, rel, content, argv in [
        ("runjson_list", "run/run.json", "[]", ["report", "run"]),
        ("runjson_source_int", "run/run.json", '{"source": 5, "overrides": 7}', ["report", "run"]),
        ("runjson_overrides_int", "run/run.json", None, ["run", "--resume", "run", "-q"]),
        ("metrics_garbage", "run/metrics.jsonl", '{"kind": "train", "step": 1}\nnot json\n{"kind":', ["report", "run"]),
        (
            "metrics_nan",
            "run/metrics.jsonl",
            '{"kind": "eval", "top1": {"student.logits": NaN}, "epoch": NaN}\n',
            ["report", "run"],
        ),
        (
            "metrics_types",
            "run/metrics.jsonl",
            '{"kind": 5, "step": "x", "losses": [1], "top1": 3}\n',
            ["report", "run"],
        ),
        ("summary_types", "run/summary.json", '{"final": 5, "best_top1": [1]}', ["report", "run"]),
        ("spec_list", "run/spec.yaml", "[1, 2]\n", ["draw", "run", "--format", "dot"]),
        ("spec_empty", "run/spec.yaml", "", ["draw", "run", "--format", "dot"]),
        ("metrics_plot_garbage", "run/metrics.jsonl", "{\nnot json\n", ["plot", "run", "-o", "p.png"]),
        (
            "draw_metrics_types",
            "run/metrics.jsonl",
            '{"kind": "train", "losses": 5}\n',
            ["draw", "run", "--format", "dot"],
        ),
        ("final_random", "run/final.pt", b"\x00garbage" * 10, ["export", "run", "--no-torchscript"]),
        ("final_truncated_eval", "run/final.pt", None, ["eval", "run"]),
        ("latest_types", "run/checkpoints/latest.json", '{"file": 5, "step": "x"}', ["run", "--resume", "run", "-q"]),
        (
            "latest_missing_file",
            "run/checkpoints/latest.json",
            '{"file": "step-nowhere.pt"}',
            ["run", "--resume", "run", "-q"],
        ),
        ("kdgraph_run_marker_garbage", "run/.kdgraph-run", "[[[", ["run", "--resume", "run", "-q"]),
    ]:
        if what == "runjson_overrides_int":
            setup = edit_json("run/run.json", lambda d: d | {"overrides": 5})
        elif what == "final_truncated_eval":

            def setup(w, o):
                return (w / "run" / "final.pt").write_bytes((w / "run" / "final.pt").read_bytes()[:500])
        else:
            setup = write(rel, content)
        add(f"run_{what}", "crash", argv, needs_run=True, setup=setup, expect="any", where="run")
    add("sweep_manifest_int", "crash", ["report", "s"], files={"s/sweep.json": '{"runs": 5}'}, expect="any", where="s")
    add(
        "sweep_manifest_escape",
        "crash",
        ["report", "s"],
        files={"s/sweep.json": '{"runs": [{"dir": "../../outside"}]}'},
        expect="any",
        where="s",
    )
    add(
        "model_random_eval",
        "crash",
        ["eval", "m.pt", "--data", "synthetic"],
        files={"m.pt": b"\x80\x02garbage"},
        where="m.pt",
    )
    add("eval_batch_zero", "crash", ["eval", "run", "--batch-size", "0"], needs_run=True, where=r"batch|run")
    add("eval_batch_negative", "crash", ["eval", "run", "--batch-size", "-1"], needs_run=True, where=r"batch|run")
    add("plan_batch_zero", "crash", ["plan", "g.yaml", "--batch", "0"], files={"g.yaml": graph()}, where=r"batch")
    add("profile_steps_zero", "crash", ["profile", "g.yaml", "--steps", "0"], files={"g.yaml": graph()}, where=r"steps")
    add(
        "profile_warmup_negative",
        "crash",
        ["profile", "g.yaml", "--warmup", "-5", "--steps", "1"],
        files={"g.yaml": graph()},
        where=r"warmup",
    )
    add(
        "sweep_seeds_zero",
        "crash",
        ["sweep", "g.yaml", "--seeds", "0", "--out", "s"],
        files={"g.yaml": graph()},
        where=r"seeds",
    )
    add(
        "draw_stage_missing",
        "crash",
        ["draw", "g.yaml", "--stage", "nope", "--format", "dot"],
        files={"g.yaml": graph()},
        where=r"nope",
    )
    add(
        "export_port_missing",
        "crash",
        ["export", "run", "--port", "student.nope", "--no-torchscript"],
        needs_run=True,
        where=r"nope",
    )
    add("eval_data_unknown", "crash", ["eval", "run", "--data", "nope"], needs_run=True, where=r"nope")
    add(
        "kd_unknown_param",
        "crash",
        V,
        files={"g.yaml": graph(kd="{loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4, Tx: 3}")},
        where=G,
    )
    add(
        "schedule_cosine_inf",
        "crash",
        V,
        files={
            "g.yaml": graph(
                kd="{loss: kd, from: teacher.logits, to: student.logits, weight: {cosine: [0, .inf], epochs: 0}, T: 4}"
            )
        },
        where=G,
    )
    add(
        "crop_pad_negative",
        "crash",
        R,
        files={"g.yaml": graph(data=base_data + ", augment: [{crop: {pad: -4}}]}")},
        where=G,
    )
    add(
        "cutout_huge",
        "crash",
        R,
        files={"g.yaml": graph(data=base_data + ", augment: [{cutout: {size: 1" + "0" * 20 + "}}]}")},
        where=G,
    )
    add("flip_p_2", "crash", V, files={"g.yaml": graph(data=base_data + ", augment: [{flip: {p: 2}}]}")}, where=G)
    add("subset_negative", "crash", V, files={"g.yaml": graph(data=base_data + ", subset: -3}")}, where=G)
    add("good_graph_runs", "crash", R, files={"g.yaml": graph()}, expect="ok")
    return cases


CHECKS: dict[str, Callable[[Path, Path], str | None]] = {}


# A warm process per worker: the heavy third-party imports once, then one fork per case. A forked child is a
# process of its own (its cwd, environment, output, exit status), started in milliseconds instead of the
# seconds a cold `python -m kdgraph` spends importing torch on a shared machine. kdgraph itself is imported
# by each child (kdgraph.cli only is preloaded, which imports no torch), so no registry or cache is shared.
SERVER = r"""
import json, os, signal, sys, time, traceback
import numpy, torch, torchvision, yaml, PIL.Image  # noqa: F401 - the slow imports, done once
import kdgraph.cli  # noqa: F401
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, path in ((0, os.devnull), (1, req["out"]), (2, req["err"])):
                target = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(target, fd)
            sys.stdin, sys.stdout, sys.stderr = open(0), open(1, "w"), open(2, "w")
            sys.argv = ["kdgraph", *req["argv"]]
            try:
                code = kdgraph.cli.main(req["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)
    start, rc = time.monotonic(), None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - start > req["timeout"]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    print(json.dumps({"rc": rc, "seconds": time.monotonic() - start}), flush=True)
"""


class Server:
    """One warm interpreter of the checkout under test; `run` forks a child per case."""

    def __init__(self, repo: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str, str]:
        out, err = cwd.parent / "stdout.txt", cwd.parent / "stderr.txt"
        req = {"argv": argv, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err), "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return reply["rc"], read(out), read(err)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ---- running -------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = (
                os.readlink(p)
                if p.is_symlink()
                else (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            )
            state[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


def make_outside(root: Path) -> Path:
    out = root / "outside"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "mine.pt").write_bytes(b"the user's checkpoint")
    (out / "notes.txt").write_text("the user's notes\n")
    (out / "final.pt").write_bytes(b"the user's weights")
    (out / "run.json").write_text('{"name": "not kdgraph"}')
    (out / "evil.py").write_text(EVIL_PY)
    return out


def base_run(repo: Path, root: Path, env: dict[str, str]) -> Path:
    """One finished run of the tiny graph (and its export), made by the checkout under test, copied per case."""
    work = root / "base"
    work.mkdir(parents=True)
    (work / "g.yaml").write_text(graph())
    for argv in (["run", "g.yaml", "--out", "run", "-q"], ["export", "run", "--no-torchscript"]):
        done = subprocess.run(
            [sys.executable, "-m", "kdgraph", *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            print(f"base {' '.join(argv)} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    return work / "run"


def classify(case: Case, rc: int | None, out: str, err: str, touched: list[str], effect: str | None) -> tuple[str, str]:
    first = next((ln for ln in err.splitlines() if ln.strip()), "")
    if rc is None:
        return "hang", "timed out"
    if "Traceback (most recent call last)" in out + err or rc == 1 or rc < 0 or rc not in (0, 2):
        return "traceback", first[:160] or f"exit {rc}"
    if touched:
        return "accepted-bad", f"outside changed: {touched[:4]}"
    if effect:
        return "accepted-bad", effect
    if rc == 0:
        if case.expect == "error":
            return "accepted-bad", "exit 0: " + (out.strip().splitlines() or [""])[-1][:140]
        if case.bad_output and re.search(case.bad_output, out):
            return "accepted-bad", f"output matches {case.bad_output!r}"
        return "clean", "exit 0"
    if case.expect == "ok":
        return "other", "refused a good input: " + first[:140]
    if case.where and not re.search(case.where, err):
        return "other", f"does not say where ({case.where}): " + first[:140]
    if not case.where and not LOCATED.match(first):
        return "other", "not located: " + first[:140]
    return "clean", first[:160]


def run_case(
    case: Case, server: Server, repo: Path, template: Path | None, root: Path, timeout: float
) -> tuple[Case, str, str, float]:
    case_dir = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=root))
    work = case_dir / "work"
    work.mkdir()
    outside = make_outside(case_dir)
    if template is not None:
        if case.needs_run:
            shutil.copytree(template, work / "run", symlinks=True)
        # the catalogues a first command writes, so that each case does not rebuild them
        shutil.copytree(template.parent / "cache", work / "cache", symlinks=True, dirs_exist_ok=True)
    for rel, content in case.files.items():
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        if case.setup:
            case.setup(work, outside)
    except Exception as e:  # noqa: BLE001 - a setup the checkout's run folder cannot take: reported, not counted
        return case, "other", f"setup failed: {type(e).__name__}: {e}", 0.0
    before = snapshot(outside)
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "KDGRAPH_CACHE": str(work / "cache"),
        "HOME": str(case_dir / "home"),
        "KDGRAPH_DATA": str(work / "data"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("KDGRAPH_DEBUG", None)
    start = time.monotonic()
    rc, out, err = server.run(case.argv, work, env, case.timeout or timeout)
    seconds = time.monotonic() - start
    touched = [k for k, v in snapshot(outside).items() if before.get(k) != v]
    touched += [k for k in before if not (outside / k).exists() and not (outside / k).is_symlink()]
    if (outside / MARKER).exists() or (work / MARKER).exists():
        touched.append(f"{MARKER} (code from data ran)")
    effect = CHECKS[case.name](work, outside) if case.name in CHECKS else None
    status, why = classify(case, rc, out, err, sorted(set(touched)), effect)
    shutil.rmtree(case_dir, ignore_errors=True)
    return case, status, why, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repo", required=True, help="the kdgraph checkout to test (run with PYTHONPATH=REPO)")
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2: the machine is shared)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    cases = [c for c in corpus() if args.k in c.name]
    if args.list:
        for c in cases:
            print(f"{c.category:6} {c.name:40} kdgraph {' '.join(c.argv)[:80]}")
        print(f"{len(cases)} cases")
        return 0
    head = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    print(f"hostile corpus: {len(cases)} cases against {repo} ({head.stdout.strip()[:100]})")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"timeout {args.timeout:.0f} s per case, {args.jobs} at a time, {when}\n")
    with tempfile.TemporaryDirectory(prefix="kdgraph-hostile-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": str(repo),
            "KDGRAPH_CACHE": str(root / "base" / "cache"),
            "HOME": str(root / "home"),
            "OMP_NUM_THREADS": "1",
        }
        template = base_run(repo, root, env)
        (root / "base" / "cache").mkdir(parents=True, exist_ok=True)
        counts = {c: dict.fromkeys(STATUSES, 0) for c in CATEGORIES}
        servers: queue.Queue[Server] = queue.Queue()
        for _ in range(max(1, args.jobs)):
            servers.put(Server(repo))

        def one(case: Case) -> tuple[Case, str, str, float]:
            server = servers.get()
            try:
                return run_case(case, server, repo, template, root, args.timeout)
            finally:
                servers.put(server)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(one, c) for c in cases]
            for f in futures:
                case, status, why, seconds = f.result()
                counts[case.category][status] += 1
                print(f"{status:12} {case.category:6} {case.name:40} {seconds:5.1f}s  {why}", flush=True)
        while not servers.empty():
            servers.get().close()
    print(f"\n{'category':10}" + "".join(f"{s:>14}" for s in STATUSES) + f"{'total':>8}")
    totals = dict.fromkeys(STATUSES, 0)
    for cat in CATEGORIES:
        row = counts[cat]
        for s in STATUSES:
            totals[s] += row[s]
        print(f"{cat:10}" + "".join(f"{row[s]:>14}" for s in STATUSES) + f"{sum(row.values()):>8}")
    print(f"{'total':10}" + "".join(f"{totals[s]:>14}" for s in STATUSES) + f"{sum(totals.values()):>8}")
    print(f"\nclean: {totals['clean']} of {sum(totals.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

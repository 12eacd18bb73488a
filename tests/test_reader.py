"""One bounded reader: no module but kdgraph/files.py opens a file a user can name, and every file kind
kdgraph reads refuses a FIFO, a device, a directory and (in a run folder) a link out, in one line.

The FIFO cases run the real CLI under a deadline: a read that blocks is interrupted after 5 s by a
BaseException the CLI cannot catch, so a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "kdgraph"
DEADLINE = 5.0  # CPU seconds a command may use (see deadline)
IDLE = 3.0  # seconds without using CPU that mean a command is blocked

# ----------------------------------------------------------------------------- (a) the package, read as code

# calls that read what they are given: allowed only on a stream or text the bounded reader produced
READ_CALLS = {
    "torch.load",
    "np.load",
    "numpy.load",
    "np.fromfile",
    "numpy.fromfile",
    "pickle.load",
    "pickle.loads",
    "json.load",
    "Image.open",
    "PIL.Image.open",
    "yaml.safe_load",
    "yaml.load",
    "yaml.unsafe_load",
    "torch.from_file",
    "np.memmap",
    "numpy.memmap",
}
# what the bounded reader hands out (and in-memory streams of what it handed out)
BOUNDED = {"open_bounded", "read_bytes", "read_text", "read_json", "bytes_stream", "read_graph_text", "BytesIO"}
WRITE_MODES = set("wax")

# Permanent: sites that read no file a user can name, each with why.
ALLOWED = {
    ("kdgraph/spec/schema.py", "schema", ".read_text"): "schemas/graph.schema.json inside the package",
    ("kdgraph/presets.py", "preset_schema", ".read_text"): "schemas/preset.schema.json inside the package",
    ("kdgraph/safe_load.py", "_load_stream", "torch.load"): "a stream load_weights got from files.open_bounded",
    ("kdgraph/run_guard.py", "run_lock", "os.open"): "the run folder itself, O_RDONLY for flock: nothing is read",
    ("kdgraph/manifest.py", "fsync_dir", "os.open"): "a folder, O_RDONLY for fsync: nothing is read",
    ("kdgraph/manifest.py", "_nofollow", "os.open"): "the opener of files kdgraph writes (O_NOFOLLOW)",
}
# TEMPORARY: read sites other helpers of issue 23 route through files.py on their branches (`datasets`:
# data.py, datasets/*, safe_pickle.py; `stores`: output_cache.py, train/cache.py, train/fixed_weights.py,
# deps.py). The coordinator empties this list after merging them.
TEMPORARY = {
    ("kdgraph/train/fixed_weights.py", "*", ".read_bytes"): "fixed weights of a checkpoint (helper `stores`)",
    ("kdgraph/output_cache.py", "*", "*"): "train.cache's stores (helper `stores`)",
    ("kdgraph/train/cache.py", "*", "*"): "train.cache's stores (helper `stores`)",
    ("kdgraph/deps.py", "*", "*"): "the dependency cache (helper `stores`)",
}


def _dotted(node: ast.AST) -> str:
    """'torch.load' for torch.load, '.read_text' for anything.read_text, 'open' for open."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner and not inner.startswith(".") and "(" not in inner else f".{node.attr}"
    return ""


def _callee(call: ast.Call) -> str:
    name = _dotted(call.func)
    if isinstance(call.func, ast.Attribute) and name.count(".") and name.split(".")[0] not in {
        "torch", "np", "numpy", "pickle", "json", "Image", "PIL", "yaml", "os", "io", "files", "builtins"
    }:  # fmt: skip
        return f".{call.func.attr}"  # a method: path.read_text(), Path(x).open()
    return name


def _mode(call: ast.Call, position: int) -> str | None:
    arg = call.args[position] if len(call.args) > position else None
    arg = next((k.value for k in call.keywords if k.arg == "mode"), arg)
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _bounded(expr: ast.AST, names: set[str]) -> bool:
    """Whether `expr` is the bounded reader's output: a call to it, a name bound to one, or a constant."""
    if isinstance(expr, ast.Call):
        return _dotted(expr.func).split(".")[-1] in BOUNDED
    if isinstance(expr, ast.Name):
        return expr.id in names
    return isinstance(expr, ast.Constant)


def _bounded_names(func: ast.AST) -> set[str]:
    """Names bound in `func` by `with open_bounded(...) as fh` or `blob = read_bytes(...)`."""
    names: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            if _bounded(node.context_expr, set()):
                names.add(node.optional_vars.id)
        elif isinstance(node, ast.Assign) and _bounded(node.value, set()):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def unbounded_reads(path: Path, rel: str) -> list[tuple[str, str, str, int]]:
    """(file, function, call, line) of each read in a module that does not go through the bounded reader."""
    tree = ast.parse(path.read_text(), rel)
    found = []

    def visit(node: ast.AST, where: str, names: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child.name if where == "<module>" else f"{where}.{child.name}"
                visit(child, inner, names | _bounded_names(child))
                continue
            if isinstance(child, ast.ClassDef):
                visit(child, child.name, names)
                continue
            if isinstance(child, ast.Call):
                call = _callee(child)
                bad = False
                if call in ("open", "io.open", "builtins.open", ".open", "os.fdopen"):
                    mode = _mode(child, 0 if call == ".open" else 1) or "r"
                    bad = not (set(mode) & WRITE_MODES)
                elif call == "os.open":
                    flags = ast.unparse(child.args[1]) if len(child.args) > 1 else ""
                    bad = not any(f in flags for f in ("O_WRONLY", "O_CREAT", "O_APPEND"))
                elif call in (".read_text", ".read_bytes"):
                    bad = True
                elif call in READ_CALLS:
                    bad = not (child.args and _bounded(child.args[0], names))
                if bad:
                    found.append((rel, where, call, child.lineno))
            visit(child, where, names)

    visit(tree, "<module>", set())
    return found


def _listed(site: tuple[str, str, str, int], table: dict) -> bool:
    import fnmatch

    rel, where, call, _ = site
    return any(fnmatch.fnmatch(rel, f) and fnmatch.fnmatch(where, w) and fnmatch.fnmatch(call, c) for f, w, c in table)


@functools.cache
def _sites() -> list[tuple[str, str, str, int]]:
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel != "kdgraph/files.py":
            sites += unbounded_reads(path, rel)
    return sites


def test_no_module_but_files_py_reads_a_file_on_its_own() -> None:
    bad = [s for s in _sites() if not _listed(s, ALLOWED) and not _listed(s, TEMPORARY)]
    assert not bad, "read these through kdgraph/files.py (read_text/read_json/read_bytes/open_bounded):\n" + "\n".join(
        f"  {rel}:{line} {call} in {where}" for rel, where, call, line in bad
    )


def test_every_permanent_allowance_is_still_needed() -> None:
    found = {(rel, where, call) for rel, where, call, _ in _sites()}
    assert not set(ALLOWED) - found, f"stale entries in ALLOWED: {sorted(set(ALLOWED) - found)}"


@pytest.mark.parametrize(
    "source, call",
    [
        ("import json\ndef f(p):\n    return json.loads(p.read_text())\n", ".read_text"),
        ("def f(p):\n    with open(p) as fh:\n        return fh.read()\n", "open"),
        ("def f(p):\n    with open(p, 'rb+') as fh:\n        return fh.read()\n", "open"),
        ("import torch\ndef f(p):\n    return torch.load(p, weights_only=True)\n", "torch.load"),
        ("import numpy as np\ndef f(p):\n    return np.load(p)\n", "np.load"),
        ("import yaml\ndef f(p):\n    return yaml.safe_load(open(p))\n", "open"),
        ("from PIL import Image\ndef f(p):\n    return Image.open(p)\n", "Image.open"),
        ("import os\ndef f(p):\n    return os.open(p, os.O_RDONLY)\n", "os.open"),
        ("from pathlib import Path\ndef f(p):\n    return Path(p).open().read()\n", ".open"),
    ],
)
def test_the_check_finds_each_kind_of_read(tmp_path: Path, source: str, call: str) -> None:
    (tmp_path / "m.py").write_text(source)
    assert call in [s[2] for s in unbounded_reads(tmp_path / "m.py", "m.py")]


def test_the_check_passes_the_bounded_reader_and_writes(tmp_path: Path) -> None:
    source = (
        "import torch, yaml, json\nfrom kdgraph.files import CHECKPOINT, GRAPH, open_bounded, read_text\n"
        "def f(p, q):\n    with open_bounded(p, CHECKPOINT) as fh:\n        state = torch.load(fh, weights_only=True)\n"
        "    doc = yaml.safe_load(read_text(q, GRAPH))\n    with open(q, 'w') as out:\n        json.dump(doc, out)\n"
    )
    (tmp_path / "m.py").write_text(source)
    assert unbounded_reads(tmp_path / "m.py", "m.py") == []


# ----------------------------------------------------------------------------- (b)-(d) through the CLI

GRAPH = """\
kdgraph: 1
name: reader
data: {dataset: synthetic, size: 16, test_size: 8, image_size: 8, channels: 1, classes: 4, batch_size: 8}
nodes:
  student: {net: mlp, hidden: [8]}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train: {epochs: 2, checkpoint_every: 1, log_every: 1, progress: false, eval: [student.logits]}
deploy: student.logits
"""


class Hung(BaseException):
    """Raised into the CLI by the deadline: not an Exception, so nothing in kdgraph can swallow it."""


def _expire(_signum, _frame):
    raise Hung("blocked, or over its CPU time")


@contextlib.contextmanager
def deadline(seconds: float = DEADLINE) -> Iterator[None]:
    """Raise Hung into this (main) thread when the command has used `seconds` of CPU time, or sat without
    using any for IDLE seconds: blocked, as in a FIFO's open waiting for a writer.

    CPU time, not the wall clock: a machine shared by many test runs slows a command down, but a command
    that makes progress always uses CPU, and one blocked on a read uses none.
    """
    main, stop = threading.get_ident(), threading.Event()

    def watch() -> None:
        last_cpu, since = time.process_time(), time.monotonic()
        while not stop.wait(0.1):
            cpu = time.process_time()
            if cpu - last_cpu > 0.02:
                last_cpu, since = cpu, time.monotonic()
            elif time.monotonic() - since > IDLE:
                signal.pthread_kill(main, signal.SIGALRM)
                return

    old = {sig: signal.signal(sig, _expire) for sig in (signal.SIGALRM, signal.SIGPROF)}
    signal.setitimer(signal.ITIMER_PROF, seconds)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        signal.setitimer(signal.ITIMER_PROF, 0)
        watcher.join()
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cli(*argv: str | Path, seconds: float = DEADLINE) -> tuple[int, str]:
    """Exit status and stderr of `kdgraph ARGV` in this process, within `seconds`."""
    from kdgraph.cli import main

    err = io.StringIO()
    try:
        with deadline(seconds), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    except Hung:
        pytest.fail(f"kdgraph {' '.join(map(str, argv))} hung (blocked {IDLE} s, or over {seconds} s of CPU)")
    return code, err.getvalue()


def one_clear_line(code: int, err: str, *names: str | Path) -> None:
    """Exit status 2, one line, no traceback, naming each of `names`."""
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for name in names:
        assert str(name) in err, err


def fifo(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    os.mkfifo(path)
    return path


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH)
    return path


def hand_run(folder: Path, graph: Path) -> Path:
    """A finished run folder as kdgraph leaves it (files written by hand: no training needed)."""
    folder.mkdir(parents=True)
    info = {"name": "reader", "source": str(graph), "overrides": [], "hash": "0" * 16}
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "spec.yaml").write_text(graph.read_text())
    lines = [
        {"kind": "train", "stage": "main", "epoch": 1, "step": 2, "loss": 1.2, "losses": {"ce": 1.2}, "lr": {"s": 0.1}},
        {"kind": "eval", "stage": "main", "epoch": 1, "step": 2, "top1": {"student.logits": 40.0}},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "summary.json").write_text("{}")
    return folder


def test_the_hand_written_run_reads(graph: Path, tmp_path: Path) -> None:
    assert cli("report", hand_run(tmp_path / "run", graph))[0] == 0


@pytest.mark.slow
def test_the_hand_written_run_draws(graph: Path, tmp_path: Path) -> None:
    assert cli("draw", hand_run(tmp_path / "run", graph), "--format", "dot", seconds=60)[0] == 0


@pytest.mark.parametrize("name", ["run.json", "spec.yaml", "metrics.jsonl"])
@pytest.mark.parametrize("command", ["report", "draw"])
def test_a_fifo_in_a_run_folder_is_one_line(graph: Path, tmp_path: Path, command: str, name: str) -> None:
    run = hand_run(tmp_path / "run", graph)
    fifo(run / name)
    argv = [command, run] + (["--format", "dot"] if command == "draw" else [])
    one_clear_line(*cli(*argv), run / name, "not a regular file")


def test_plot_of_a_fifo_metrics_file_is_one_line(graph: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = hand_run(tmp_path / "run", graph)
    fifo(run / "metrics.jsonl")
    one_clear_line(*cli("plot", run, "-o", tmp_path / "c.png"), run / "metrics.jsonl", "not a regular file")


def test_a_fifo_sweep_manifest_is_one_line(graph: Path, tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    root.mkdir()
    fifo(root / "sweep.json")
    one_clear_line(*cli("report", root), root / "sweep.json", "not a regular file")
    one_clear_line(*cli("sweep", graph, "--out", root), root / "sweep.json", "not a regular file")


def test_fifo_graph_preset_and_extends_base(graph: Path, tmp_path: Path) -> None:
    one_clear_line(*cli("validate", fifo(tmp_path / "f.yaml")), tmp_path / "f.yaml", "not a regular file")
    one_clear_line(*cli("validate", graph, "--preset", fifo(tmp_path / "p.yaml")), "p.yaml", "not a regular file")
    child = tmp_path / "child.yaml"
    child.write_text(GRAPH + "extends: base.yaml\n")
    fifo(tmp_path / "base.yaml")
    one_clear_line(*cli("validate", child), "base.yaml", "not a regular file")


def test_a_checkpoint_or_model_file_that_is_a_fifo_directory_or_device_is_one_line(graph: Path, tmp_path: Path) -> None:
    from kdgraph.errors import CheckpointError
    from kdgraph.safe_load import load_final_graph

    (tmp_path / "dir.pth").mkdir()
    for ckpt, why in (
        (fifo(tmp_path / "teacher.pth"), "not a regular file"),
        (tmp_path / "dir.pth", "a directory"),
        (Path("/dev/zero"), "not a regular file"),
    ):
        one_clear_line(*cli("validate", graph, f"+nodes.student.init={{checkpoint: {ckpt}, key: null}}"), ckpt, why)
    model = fifo(tmp_path / "model.pt")  # kdgraph eval of an exported model
    one_clear_line(*cli("eval", model, "--data", "synthetic"), model, "not a regular file")
    one_clear_line(*cli("eval", "/dev/zero", "--data", "synthetic"), "/dev/zero", "not a regular file")
    (tmp_path / "cached").mkdir()  # a cached `init: {from:}` dependency's final.pt
    with deadline(), pytest.raises(CheckpointError, match="not a regular file"):
        load_final_graph(fifo(tmp_path / "cached" / "final.pt"), within=tmp_path / "cached")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("not json", "run.json:1: not valid JSON"),
        ("[1, 2]", "run.json: the file is a list, not a mapping"),
        ('{"name": 5}', "run.json: 'name' is an integer, not a string"),
        ('{"overrides": "train.seed=1"}', "run.json: 'overrides' is a string, not a list"),
        ('{"overrides": [1]}', "run.json: 'overrides[0]' is an integer, not a string"),
        ("\x00\xff\xfe garbage", "run.json:1: not UTF-8 text"),
    ],
)
def test_a_malformed_run_json_is_one_line_naming_it(graph: Path, tmp_path: Path, text: str, expected: str) -> None:
    run = hand_run(tmp_path / "run", graph)
    (run / "run.json").write_bytes(text.encode("latin-1"))
    for argv in (["report", run], ["draw", run, "--format", "dot"], ["run", "--resume", run]):
        code, err = cli(*argv)
        one_clear_line(code, err, run / "run.json")
        assert expected in err, err


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"kind": "eval", "stage": "main", "epoch": 1, "step": 2, "top1": {"student.logits": "high"}}'], ":1: "),
        (['{"kind": "train", "epoch": "one", "step": 1}'], ":1: 'epoch' is a string, not an integer"),
        (['{"kind": "train", "epoch": 1e400, "step": 1}'], ":1: 'epoch' is a number, not an integer"),
        (['{"kind": "train", "epoch": 10000000000000000000000, "step": 1}'], ":1: 'epoch' is 1000"),
        (['{"kind": "train", "losses": [1, 2]}'], ":1: 'losses' is a list, not a mapping"),
        (["[1, 2]"], ":1: the line is a list, not a record"),
        (['{"kind": "train", "step": 1', '{"kind": "eval"}'], ":1: the line is not JSON"),
        (['{"kind": "train"}', "\x00\x01garbage", '{"kind": "eval"}'], ":2: the line is not JSON"),
    ],
)
def test_a_malformed_metrics_line_is_one_line_naming_file_and_line(
    graph: Path, tmp_path: Path, lines: list[str], expected: str
) -> None:
    pytest.importorskip("matplotlib")
    run = hand_run(tmp_path / "run", graph)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for argv in (["report", run], ["draw", run, "--format", "dot"], ["plot", run, "-o", tmp_path / "c.png"]):
        code, err = cli(*argv)
        one_clear_line(code, err, f"{run / 'metrics.jsonl'}{expected}")


def test_a_torn_last_metrics_line_is_skipped(graph: Path, tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run", graph)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "eval", "stage": "ma')  # a run killed mid-write
    assert cli("report", run)[0] == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: [1, 2\n", "not a file kdgraph wrote"),
        ("- 1\n- 2\n", "spec.yaml: the file is a list, not a mapping"),
        ("", "spec.yaml: the file is empty"),
        ("# only a comment\n", "spec.yaml: the file is empty"),
        (
            "name: reader\npublished: {top1: high, pair: mlp}\n",
            "2: 'published.top1' is a string, not a number",
        ),
        ("name: reader\nnodes: {student: 5}\n", "spec.yaml:2: 'nodes.student' is an integer, not a mapping"),
        ("name: reader\ndata: [1]\n", "spec.yaml:2: 'data' is a list, not a mapping"),
    ],
)
def test_a_malformed_spec_yaml_is_one_line(graph: Path, tmp_path: Path, text: str, expected: str) -> None:
    run = hand_run(tmp_path / "run", graph)
    (run / "spec.yaml").write_text(text)
    for argv in (["report", run], ["draw", run, "--format", "dot"]):
        code, err = cli(*argv)
        one_clear_line(code, err, f"{run / 'spec.yaml'}")
        assert expected in err, err


@pytest.mark.parametrize(
    "manifest, expected",
    [
        ("{", "sweep.json:1: not valid JSON"),
        ('{"runs": 5}', "'runs' is an integer, not a list"),
        ('{"runs": [{"dir": 7}]}', "'runs[0].dir' is an integer, not a string"),
        ('{"runs": [{"dir": "../../elsewhere"}]}', "is not a folder name inside the sweep"),
        ('{"runs": [{"variant": "a"}]}', "'runs[0].dir' is missing"),
    ],
)
def test_a_malformed_sweep_manifest_is_one_line(graph: Path, tmp_path: Path, manifest: str, expected: str) -> None:
    root = tmp_path / "sweep"
    hand_run(root / "seed0", graph)
    (root / "sweep.json").write_text(manifest)
    code, err = cli("report", root)
    one_clear_line(code, err, root / "sweep.json")
    assert expected in err, err
    code, err = cli("sweep", graph, "--out", root)  # a sweep run again on its folder reads the manifest first
    one_clear_line(code, err, root / "sweep.json")


def test_a_link_out_of_the_run_folder_is_refused(graph: Path, tmp_path: Path) -> None:
    other = hand_run(tmp_path / "other", graph)
    run = hand_run(tmp_path / "run", graph)
    for name in ("metrics.jsonl", "run.json", "spec.yaml"):
        (run / name).unlink()
        (run / name).symlink_to(other / name)
        for argv in (["report", run], ["draw", run, "--format", "dot"]):
            code, err = cli(*argv)
            one_clear_line(code, err, run / name, "outside")
        (run / name).unlink()
        shutil.copy(other / name, run / name)
    inside = run / "kept.jsonl"  # a link that stays inside the folder is followed
    (run / "metrics.jsonl").rename(inside)
    (run / "metrics.jsonl").symlink_to(inside)
    assert cli("report", run)[0] == 0


@pytest.mark.parametrize("name", ["run.json", "spec.yaml", "metrics.jsonl"])
def test_a_directory_or_device_in_a_run_folder_is_one_line(graph: Path, tmp_path: Path, name: str) -> None:
    run = hand_run(tmp_path / "run", graph)
    (run / name).unlink()
    (run / name).mkdir()
    one_clear_line(*cli("report", run), run / name, "is a directory")
    (run / name).rmdir()
    (run / name).symlink_to("/dev/zero")
    code, err = cli("report", run)
    one_clear_line(code, err, run / name)
    assert "outside" in err or "not a regular file" in err


@pytest.mark.slow
def test_a_fifo_meta_catalogue_is_rebuilt_not_waited_on(graph: Path, tmp_path: Path) -> None:
    """The torchvision catalogue every command reads at start-up: a FIFO there is absent (the catalogue is
    rebuilt in memory) and kept: kdgraph replaces only files it wrote (kdgraph/manifest.py)."""
    import importlib.metadata

    version = importlib.metadata.version("torchvision").split("+")[0]
    cache = tmp_path / "cache"
    (cache / "meta").mkdir(parents=True)
    catalogue = fifo(cache / "meta" / f"torchvision-{version}-models.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KDGRAPH_CACHE": str(cache), "KDGRAPH_CPU": "1"}
    code, err = watched([sys.executable, "-m", "kdgraph", "validate", graph], env, tmp_path)
    assert code == 0 and "Traceback" not in err, err
    assert stat.S_ISFIFO(os.lstat(catalogue).st_mode)  # not kdgraph's file: left as it was


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def watched(argv: list, env: dict, cwd: Path) -> tuple[int, str]:
    """Exit status and stderr of a real process; it fails the test when it sits IDLE s without using CPU."""
    proc = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last, since = -1, time.monotonic()
    while True:
        try:
            _, err = proc.communicate(timeout=0.2)
            return proc.returncode, err.decode()
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(OSError):
            ticks = _cpu_ticks(proc.pid)
            if ticks != last:
                last, since = ticks, time.monotonic()
        if time.monotonic() - since > IDLE:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{' '.join(map(str, argv[1:]))} blocked ({IDLE} s without using CPU)")


def test_cache_meta_reader_treats_garbage_and_fifos_as_absent(tmp_path: Path) -> None:
    from kdgraph.cache import read_meta, write_meta

    meta = tmp_path / "cache" / "meta"
    meta.mkdir(parents=True)
    (meta / "a.json").write_bytes(b"\x00\xff garbage")
    fifo(meta / "b.json")
    (meta / "c.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    with deadline():
        assert [read_meta(n) for n in ("a.json", "b.json", "c.json")] == [None, None, None]
    write_meta("b.json", {"x": 1})  # kdgraph never replaces a file it did not write (kdgraph/manifest.py)
    assert stat.S_ISFIFO(os.lstat(meta / "b.json").st_mode) and read_meta("b.json") is None
    write_meta("d.json", {"x": 1})
    assert read_meta("d.json") == {"x": 1}


# ----------------------------------------------------------------------------- --resume on a real paused run


@pytest.fixture
def paused(graph: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    code, err = cli("run", graph, "--out", run, "--stop-after", "1", seconds=300)
    assert code == 0, err
    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run.json", "spec.yaml", "metrics.jsonl", "checkpoints/latest.json"])
def test_resume_with_a_fifo_or_link_out_is_one_line(paused: Path, tmp_path: Path, name: str) -> None:
    good = (paused / name).read_bytes()
    fifo(paused / name)
    code, err = cli("run", "--resume", paused)
    if name == "checkpoints/latest.json":  # the pointer is optional: the newest intact checkpoint is used
        assert code == 0, err
        return
    one_clear_line(code, err, paused / name, "not a regular file")
    (paused / name).unlink()
    (tmp_path / "outside").write_bytes(good)
    (paused / name).symlink_to(tmp_path / "outside")
    one_clear_line(*cli("run", "--resume", paused), paused / name, "outside")


@pytest.mark.slow
def test_resume_through_a_linked_out_checkpoints_folder_is_refused(paused: Path, tmp_path: Path) -> None:
    shutil.move(paused / "checkpoints", tmp_path / "elsewhere")
    (paused / "checkpoints").symlink_to(tmp_path / "elsewhere")
    code, err = cli("run", "--resume", paused)
    one_clear_line(code, err, paused / "checkpoints", "symbolic link")  # the manifest refuses it first
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir())  # nothing of the other folder removed


def test_load_weights_reads_a_regular_file_only(tmp_path: Path) -> None:
    from kdgraph.errors import CheckpointError
    from kdgraph.safe_load import load_weights

    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights(tmp_path / "ok.pt")["w"], torch.ones(2))
    with deadline(), pytest.raises(CheckpointError, match="not a regular file"):
        load_weights(fifo(tmp_path / "f.pt"))
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="outside"):
        load_weights(tmp_path / "ok.pt", within=tmp_path / "run")

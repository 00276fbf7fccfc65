"""The README runs as written: every ```bash and ```python block, in order, in a folder laid out as `make demo` leaves
it (a `registry/`, the bundled `data/sample/`, and the ABCD sample the walkthrough scores), and does what its text
says. A block is left out only when its fence says why (```bash skip-test: reason). The fast run uses the tiny
registry of the test fixtures; the slow run (`pytest -m slow`) a real `make demo` folder named by CARELENS_DEMO_DIR.
The layout table of docs/DEVELOPING.md matches the tree."""
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

from carelens.inference.selection import ACTIONS, CHURN_ONLY_ACTION
from conftest import REPO, SHARED

ABCD_SAMPLE = SHARED / "data" / "transcripts" / "abcd_sample.json"
ABCD_CHATS = {"3592", "9489", "3695"}
BLOCK_SECONDS = 900


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int
    skip: Optional[str]

    @property
    def name(self) -> str:
        return f"README.md:{self.line}-{self.language}"


@dataclass
class Outcome:
    ok: bool
    output: str
    namespace: Optional[dict] = None


def readme_blocks() -> list[Block]:
    """Every ```bash and ```python block of the README, with the line its code starts on and the reason its fence
    gives for leaving it out (```bash skip-test: reason), if any."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = []
    for found in re.finditer(r"^```(bash|python)([^\n]*)\n(.*?)^```", text, flags=re.M | re.S):
        info = found.group(2)
        skip = re.search(r"skip-test:?\s*(.*)", info)
        line = text.count("\n", 0, found.start()) + 2
        reason = (skip.group(1).strip() or "no reason given") if skip else None
        blocks.append(Block(found.group(1), found.group(3), line, reason))
    return blocks


BLOCKS = readme_blocks()


def block_with(fragment: str) -> Block:
    [block] = [b for b in BLOCKS if fragment in b.code]
    return block


def run_bash(block: Block, folder: Path) -> Outcome:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=BLOCK_SECONDS)
    return Outcome(done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")


def run_python(block: Block, folder: Path) -> Outcome:
    namespace: dict = {}
    printed = io.StringIO()
    earlier = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(block.code, block.name, "exec"), namespace)
        return Outcome(True, printed.getvalue(), namespace)
    except Exception:
        return Outcome(False, printed.getvalue() + traceback.format_exc(), namespace)
    finally:
        os.chdir(earlier)


def run_readme(folder: Path) -> dict[Block, Outcome]:
    """Each block that is not left out, in README order, in `folder`: bash with -euo pipefail and the virtual
    environment's bin first on PATH, python in-process with `folder` as the working directory."""
    return {block: (run_bash if block.language == "bash" else run_python)(block, folder)
            for block in BLOCKS if block.skip is None}


def demo_folder(folder: Path, registry: Path) -> Path:
    """A working folder as `make demo` leaves the repository: its registry (copied, so nothing writes into the one
    given), the bundled sample, and abcd_sample.json, which the walkthrough asks the reader to save there."""
    shutil.copytree(registry, folder / "registry")
    shutil.copytree(REPO / "data" / "sample", folder / "data" / "sample")
    shutil.copy(ABCD_SAMPLE, folder / "abcd_sample.json")
    return folder


@dataclass
class ReadmeRun:
    folder: Path
    outcomes: dict
    tiny: bool

    def outcome(self, fragment: str) -> Outcome:
        return self.outcomes[block_with(fragment)]


@pytest.fixture(scope="module", params=["tiny", pytest.param("demo", marks=pytest.mark.slow)])
def readme(request, tmp_path_factory) -> ReadmeRun:
    """The README's blocks run once per kind of registry: the fixtures' tiny one, or a real demo's
    ($CARELENS_DEMO_DIR/registry, after `make demo`)."""
    if not ABCD_SAMPLE.is_file():
        pytest.skip(f"the walkthrough scores {ABCD_SAMPLE}, absent on this machine")
    if request.param == "tiny":
        registry = request.getfixturevalue("registry_with_models").root
    else:
        demo = os.environ.get("CARELENS_DEMO_DIR")
        if not demo:
            pytest.skip("set CARELENS_DEMO_DIR to a folder where `make demo` ran (it holds registry/)")
        registry = Path(demo) / "registry"
    folder = demo_folder(tmp_path_factory.mktemp(f"readme-{request.param}"), registry)
    return ReadmeRun(folder, run_readme(folder), request.param == "tiny")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block_runs(readme, block):
    if block.skip is not None:
        pytest.skip(f"{block.name} left out by its fence: {block.skip}")
    outcome = readme.outcomes[block]
    assert outcome.ok, f"{block.name} failed:\n{block.code}\n{outcome.output[-6000:]}"


def test_few_blocks_are_left_out():
    """Leaving a block out is the exception: the two make targets only."""
    assert [b.code.split()[:2] for b in BLOCKS if b.skip] == [["make", "demo"]]


def test_walkthrough_flags_the_three_chats(readme):
    """`--threshold 0` flags every customer of contacts.csv; each has an action and reasons; nothing was
    dead-lettered; the manifest balances every stage."""
    assert readme.outcome("carelens nightly --transcripts abcd_sample.json").ok
    tonight = readme.folder / "tonight"
    for written in ("flagged.csv", "flagged.parquet", "summary.html", "dead_letter.jsonl", "_manifest.json"):
        assert (tonight / written).is_file(), written
    flagged = pd.read_csv(tonight / "flagged.csv", dtype={"contact_id": str, "customer_id": str})
    assert set(flagged["contact_id"]) == ABCD_CHATS
    assert set(flagged["customer_id"]) == {"cminh730", "aphoenix939", "jwu859"}
    assert flagged["risk"].is_monotonic_decreasing
    assert flagged["action"].isin([*ACTIONS.values(), CHURN_ONLY_ACTION]).all()
    assert flagged["reasons"].str.len().gt(0).all()
    assert (tonight / "dead_letter.jsonl").read_text() == ""
    manifest = json.loads((tonight / "_manifest.json").read_text())
    assert manifest["balanced"] and manifest["counts"] == {"in": 6, "out": 6, "dead": 0}
    assert manifest["failures"] == []
    printed = readme.outcome("cat tonight/flagged.csv").output
    assert all(chat in printed for chat in ABCD_CHATS)


def test_walkthrough_joins_each_chat_to_its_contact(readme):
    """Each contact of contacts.csv is predicted with its chat's conversation features (contact_id = convo_id), the
    run says so first, and no warning says an answered contact had no conversation."""
    from carelens.inference import read_parts
    predictions = read_parts(readme.folder / "tonight", "predictions")
    assert set(predictions["contact_id"].astype(str)) == ABCD_CHATS
    assert predictions[["customer_sentiment_end", "agent_empathy_mean"]].notna().all().all()
    manifest = json.loads((readme.folder / "tonight" / "_manifest.json").read_text())
    assert not [w for w in manifest["warnings"] if "no conversation features" in w]
    assert manifest["joins"]["matched"] == manifest["joins"]["with_conversation"] == 3
    printed = readme.outcome("carelens nightly --transcripts abcd_sample.json").output.splitlines()
    joined = printed.index("transcripts: 3 read, 3 matched a contact")
    assert printed[joined + 1] == "contacts: 3 scored, 3 with a conversation, 0 answered without one"


def test_turn_scores_sit_beside_their_text(readme):
    """One row per spoken turn of the three chats, its text beside it; customer turns carry a sentiment in [-1, 1],
    agent turns an empathy score in [0, 1]."""
    outcome = readme.outcome("score_turns(")
    assert outcome.ok, outcome.output
    turns = outcome.namespace["turns"]
    chats = json.loads(ABCD_SAMPLE.read_text())
    spoken = [text for chat in chats for speaker, text in chat["original"] if speaker != "action"]
    assert turns["text"].tolist() == spoken
    assert set(turns["conversation_id"].astype(str)) == ABCD_CHATS
    customer, agent = turns[turns["speaker"] == "customer"], turns[turns["speaker"] == "agent"]
    assert customer["sentiment"].between(-1, 1).all() and agent["sentiment"].isna().all()
    assert agent["empathy"].between(0, 1).all() and customer["empathy"].isna().all()
    assert spoken[0] in outcome.output


def test_python_api_example_does_what_its_comments_say(readme):
    outcome = readme.outcome("Scorer.load(\"registry\")                 #")
    assert outcome.ok, outcome.output
    namespace = outcome.namespace
    predicted, flagged = namespace["predicted"], namespace["flagged"]
    assert predicted["customer_id"].is_unique and len(predicted) == 500
    assert predicted["churn_risk"].between(0, 1).all() and predicted["retaliation_risk"].between(0, 1).all()
    assert len(flagged) == 20 and flagged["risk"].is_monotonic_decreasing
    assert flagged["risk"].iloc[-1] >= predicted[["churn_risk", "retaliation_risk"]].max(axis=1).nlargest(20).min()
    assert flagged["action"].isin([*ACTIONS.values(), CHURN_ONLY_ACTION]).all()
    assert flagged["reasons"].map(len).between(1, 3).all()
    assert not [w for w in flagged.attrs["warnings"] if "no conversation features" in w]
    assert len(namespace["features"]) == sum(1 for _ in (REPO / "data" / "sample" / "transcripts.jsonl").open())
    assert set(namespace["scorer"].versions) == {"churn", "retaliation", "transcripts"}
    if readme.tiny:
        assert namespace["scorer"].versions == {"churn": "v1", "retaliation": "v1", "transcripts": "v1"}
    manifest = namespace["manifest"]
    assert manifest["balanced"] and manifest["counts"] == {"in": 6, "out": 6, "dead": 0}
    assert (readme.folder / "tonight-python" / "flagged.csv").is_file()


def test_training_publishes_a_model_that_evaluate_scores(readme):
    """The training block publishes the next churn version, and `evaluate --json` scores it on the bundled day it
    never saw (held out, with a sensible ROC-AUC)."""
    outcome = readme.outcome("carelens train churn --data history")
    assert outcome.ok, outcome.output
    churn = readme.folder / "registry" / "churn"
    newest = max((p.name for p in churn.glob("v*")), key=lambda v: int(v[1:]))
    assert (churn / "latest").read_text().strip() == newest and newest != "v1"
    [line] = [line for line in outcome.output.splitlines() if line.startswith("{")]
    evaluated = json.loads(line)
    assert evaluated["held_out"] and evaluated["metrics"]["rows"] == 500
    assert 0.5 < evaluated["metrics"]["roc_auc"] <= 1


def test_the_layout_table_names_every_module_of_each_layer():
    """docs/DEVELOPING.md's layout table matches the tree: each module of a layer is named in that layer's row, and
    each module a row names exists."""
    developing = (REPO / "docs" / "DEVELOPING.md").read_text(encoding="utf-8")
    for layer in ("data", "models", "training", "inference"):
        [row] = re.findall(rf"^\| `{layer}/` \|.*$", developing, re.M)
        named = set(re.findall(r"`([\w/]+\.py)`", row))
        folders = set(re.findall(r"`(\w+)/`", row)) - {layer}
        modules = {p.relative_to(REPO / layer) for p in (REPO / layer).rglob("*.py") if p.name != "__init__.py"}
        unnamed = [str(m) for m in modules if m.name not in named and str(m) not in named
                   and not (len(m.parts) > 1 and m.parts[0] in folders)]
        absent = [n for n in named if not any(str(m).endswith(n) for m in modules)]
        assert (unnamed, absent) == ([], []), layer


def test_readme_links_resolve():
    """Every relative link of the README names a file of the repository."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)#][^)]*)\)", readme) if "://" not in t}
    assert targets and [t for t in targets if not (REPO / t).exists()] == []


def test_the_readme_is_short_and_speaks_to_a_user_not_of_its_history():
    """At most 300 lines, and none of the project's own history: issues, commits, 'before this change'."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    history = re.findall(r"\bissue \d+|\bissues? \d|before this change|\b[0-9a-f]{7,40}\b|\bsession \d", readme,
                         flags=re.I)
    assert history == []


def test_every_figures_section_names_its_date_cpu_and_command():
    """Each section of docs/FIGURES.md opens with when it was measured, on which CPU, and how to reproduce it."""
    figures = (REPO / "docs" / "FIGURES.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", figures, flags=re.M)[1:]
    assert len(sections) >= 8
    for section in sections:
        title, _, body = section.partition("\n")
        stamp = next((line for line in body.splitlines() if line.startswith("*Measured ")), "")
        assert re.match(r"\*Measured 20\d\d-\d\d-\d\d\b.*·.*(AMD EPYC|Intel Xeon).*· reproduce: ", stamp), title

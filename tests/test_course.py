"""The installed course: `viztools course` never loses a student's work, `viztools lab` writes the course where
there is none, `viztools present` finds a lecture, and the wheel ships a course that runs and grades (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from viztools import __version__, cli, course
from viztools.cli import main
from viztools.course import Action, CourseError, CourseFile, find_lecture, write_course

REPO = Path(__file__).resolve().parents[1]


def notebook(*sources: str, outputs: bool = False) -> bytes:
    """A notebook with one code cell per source (as JupyterLab saves it: source as a list of lines)."""
    cells = [{"cell_type": "code", "execution_count": 1 if outputs else None, "id": f"c{i}", "metadata": {},
              "outputs": [{"name": "stdout", "output_type": "stream", "text": ["ran\n"]}] if outputs else [],
              "source": source.splitlines(keepends=True)} for i, source in enumerate(sources)]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1).encode()


def release(version: str, **changes: str) -> list[CourseFile]:
    """The course of one release: two lectures and two exercises; ``changes`` replace a file's source."""
    sources = {"lectures/00_getting_started.ipynb": "print('hello')",
               "lectures/03_occlusion.ipynb": "occlusion()",
               "exercises/03_occlusion.ipynb": "# YOUR CODE HERE",
               "exercises/04_saliency.ipynb": "# YOUR CODE HERE too"}
    for name, source in changes.items():
        sources[name.replace("__", "/", 1) + ".ipynb"] = source  # lectures__03_occlusion: lectures/03_occlusion
    return [CourseFile(relative, notebook(source), relative.split("/")[0]) for relative, source in sources.items()
            if source is not None] + [CourseFile("README.md", course.course_readme(version).encode(), "readme")]


def edit(path: Path, source: str) -> None:
    path.write_bytes(notebook(source))


def source_of(path: Path) -> str:
    return "".join(json.loads(path.read_text())["cells"][0]["source"])


# --------------------------------------------------------------------------------------------------------------
# viztools course: writing, upgrading, never losing work
# --------------------------------------------------------------------------------------------------------------


def test_the_course_ships_lectures_and_exercises_but_no_solutions():
    files = course.course_files()
    names = [f.relative for f in files]
    lectures = sorted(p.name for p in (REPO / "lectures").glob("[0-9][0-9]_*.ipynb"))
    exercises = sorted(p.name for p in (REPO / "exercises").glob("[0-9][0-9]_*.ipynb"))
    assert names == [f"lectures/{n}" for n in lectures] + [f"exercises/{n}" for n in exercises] + ["README.md"]
    assert not any("solution" in name for name in names)
    solutions = {(REPO / "solutions" / Path(n).name).read_bytes() for n in names if (REPO / "solutions" /
                                                                                       Path(n).name).is_file()}
    assert solutions and not solutions & {f.content for f in files}


def test_course_source_is_the_clone_in_development_and_the_package_copy_once_installed(tmp_path):
    assert course.course_source() == REPO  # this editable install
    clone, packaged = tmp_path / "clone", tmp_path / "site-packages" / "viztools" / "_course"
    (packaged / "lectures").mkdir(parents=True)
    (packaged / "lectures" / course.FIRST_LECTURE).write_text("{}")
    assert course.course_source(clone, packaged) == packaged  # no clone: the copy inside the package
    (clone / "lectures").mkdir(parents=True)
    (clone / "lectures" / course.FIRST_LECTURE).write_text("{}")
    (clone / "pyproject.toml").write_text("")
    assert course.course_source(clone, packaged) == clone
    with pytest.raises(CourseError, match="pip install --force-reinstall viztools"):
        course.course_source(tmp_path / "nowhere", tmp_path / "nothing")


def test_first_run_writes_the_course_and_a_manifest(tmp_path):
    folder = tmp_path / "my course"
    report = write_course(folder, files=release("0.1.0"), version="0.1.0")
    assert [a.what for a in report.actions] == ["written"] * 5
    assert source_of(folder / "lectures" / "03_occlusion.ipynb") == "occlusion()"
    assert "viztools lab" in (folder / "README.md").read_text()
    manifest = json.loads((folder / course.MANIFEST).read_text())
    assert manifest["version"] == "0.1.0"
    record = manifest["files"]["exercises/04_saliency.ipynb"]
    assert record["version"] == "0.1.0"
    assert record["sha256"] == __import__("hashlib").sha256((folder / "exercises/04_saliency.ipynb").read_bytes()
                                                           ).hexdigest()
    assert course.is_course(folder) and course.course_version(folder) == "0.1.0"
    assert "5 new" in report.summary()


def test_rerun_with_the_same_release_changes_nothing(tmp_path):
    write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.ipynb")}
    report = write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    assert {a.what for a in report.actions} == {"current"}
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.ipynb")} == before
    assert "already up to date" in report.summary()


def test_upgrade_refreshes_untouched_notebooks_and_keeps_edited_ones(tmp_path):
    write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    lectures, exercises = tmp_path / "lectures", tmp_path / "exercises"
    edit(lectures / "03_occlusion.ipynb", "occlusion()  # my notes")
    edit(exercises / "03_occlusion.ipynb", "my answer")
    # Running a lecture (outputs, execution counts) is not editing it.
    (lectures / "00_getting_started.ipynb").write_bytes(notebook("print('hello')", outputs=True))

    new = release("0.2.0", lectures__00_getting_started="print('hello, 0.2')",
                  lectures__03_occlusion="occlusion(v2)", exercises__03_occlusion="# YOUR CODE HERE (v2)",
                  exercises__04_saliency="# saliency v2", exercises__05_class_visualization="# new exercise")
    report = write_course(tmp_path, files=new, version="0.2.0")
    what = {a.relative: a for a in report.actions}

    assert what["lectures/00_getting_started.ipynb"].what == "updated"
    assert source_of(lectures / "00_getting_started.ipynb") == "print('hello, 0.2')"
    assert what["lectures/03_occlusion.ipynb"] == Action("lectures/03_occlusion.ipynb", "kept",
                                                         "lectures/03_occlusion.v0.2.0.ipynb")
    assert source_of(lectures / "03_occlusion.ipynb") == "occlusion()  # my notes"
    assert source_of(lectures / "03_occlusion.v0.2.0.ipynb") == "occlusion(v2)"
    assert what["exercises/03_occlusion.ipynb"].what == "kept"
    assert source_of(exercises / "03_occlusion.ipynb") == "my answer"
    assert source_of(exercises / "03_occlusion.v0.2.0.ipynb") == "# YOUR CODE HERE (v2)"
    assert what["exercises/04_saliency.ipynb"].what == "updated"  # never started: the new version replaces it
    assert what["exercises/05_class_visualization.ipynb"].what == "written"
    assert course.course_version(tmp_path) == "0.2.0"
    summary = report.summary()
    assert "(was 0.1.0)" in summary
    assert "kept lectures/03_occlusion.ipynb (your edits); the new version is lectures/03_occlusion.v0.2.0.ipynb" \
        in summary

    # The next upgrade still knows the edited notebooks are the student's, and who wrote the versioned copy.
    edit(lectures / "03_occlusion.v0.2.0.ipynb", "my notes on the copy")
    report = write_course(tmp_path, files=release("0.2.0", lectures__03_occlusion="occlusion(v3)"), version="0.2.0")
    kept = {a.relative: a.copy for a in report.actions if a.what == "kept"}
    assert kept["lectures/03_occlusion.ipynb"] == "lectures/03_occlusion.v0.2.0-2.ipynb"
    assert source_of(lectures / "03_occlusion.v0.2.0.ipynb") == "my notes on the copy"
    assert source_of(lectures / "03_occlusion.v0.2.0-2.ipynb") == "occlusion(v3)"


def test_edits_without_a_newer_version_are_simply_left_alone(tmp_path):
    write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    edit(tmp_path / "exercises" / "03_occlusion.ipynb", "my answer")
    report = write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    assert Action("exercises/03_occlusion.ipynb", "yours") in report.actions
    assert sorted(p.name for p in (tmp_path / "exercises").iterdir()) == ["03_occlusion.ipynb", "04_saliency.ipynb"]
    assert "1 edited by you (no newer version)" in report.summary() and "kept" not in report.summary()


def test_force_replaces_edited_lectures_but_never_exercises(tmp_path):
    write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    edit(tmp_path / "lectures" / "03_occlusion.ipynb", "mine")
    edit(tmp_path / "exercises" / "03_occlusion.ipynb", "my answer")
    report = write_course(tmp_path, files=release("0.1.0"), version="0.1.0", force=True)
    what = {a.relative: a.what for a in report.actions}
    assert what["lectures/03_occlusion.ipynb"] == "replaced"
    assert source_of(tmp_path / "lectures" / "03_occlusion.ipynb") == "occlusion()"
    assert what["exercises/03_occlusion.ipynb"] == "yours"
    assert source_of(tmp_path / "exercises" / "03_occlusion.ipynb") == "my answer"
    assert "replaced lectures/03_occlusion.ipynb" in report.summary()
    report = write_course(tmp_path, files=release("0.2.0", exercises__03_occlusion="v2"), version="0.2.0", force=True)
    assert Action("exercises/03_occlusion.ipynb", "kept", "exercises/03_occlusion.v0.2.0.ipynb") in report.actions
    assert source_of(tmp_path / "exercises" / "03_occlusion.ipynb") == "my answer"


def test_a_folder_with_notebooks_but_no_manifest_is_never_overwritten(tmp_path):
    (tmp_path / "lectures").mkdir()
    edit(tmp_path / "lectures" / "03_occlusion.ipynb", "somebody's own notebook")
    report = write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    assert Action("lectures/03_occlusion.ipynb", "kept", "lectures/03_occlusion.v0.1.0.ipynb") in report.actions
    assert source_of(tmp_path / "lectures" / "03_occlusion.ipynb") == "somebody's own notebook"


def test_fingerprint_ignores_outputs_and_metadata_but_not_sources():
    plain, ran = notebook("x = 1"), notebook("x = 1", outputs=True)
    assert course.fingerprint(plain, "a.ipynb") == course.fingerprint(ran, "a.ipynb")
    assert course.fingerprint(plain, "a.ipynb") != course.fingerprint(notebook("x = 2"), "a.ipynb")
    assert course.fingerprint(b"not json", "a.ipynb").startswith("bytes:")  # a broken notebook: its bytes count


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_course_refuses_a_file(tmp_path, capsys, where):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    folder = target if where == "file" else target / "course"
    assert main(["course", str(folder)]) == 2
    error = capsys.readouterr().err
    assert f"{target} is a file, not a folder" in error and "Choose another folder" in error
    assert target.read_text() == "mine"


def test_course_reports_a_folder_it_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setattr(course.os, "access", lambda path, mode: False)  # root may write anywhere: pretend not
    with pytest.raises(CourseError, match=r"Cannot write in .* \(no permission\)"):
        write_course(tmp_path / "course", files=release("0.1.0"))


def test_a_write_that_fails_midway_is_reported_and_remembered(tmp_path):
    (tmp_path / "lectures" / "03_occlusion.ipynb").mkdir(parents=True)  # a folder where a notebook must go
    with pytest.raises(CourseError, match="Cannot write the course into"):
        write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    assert list(course.read_manifest(tmp_path)["files"]) == ["lectures/00_getting_started.ipynb"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_viztools_course_command_writes_the_real_course(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["course"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / course.DEFAULT_FOLDER
    assert (folder / "lectures" / course.FIRST_LECTURE).is_file()
    assert (folder / "exercises" / "03_occlusion.ipynb").read_bytes() == (REPO / "exercises" /
                                                                          "03_occlusion.ipynb").read_bytes()
    assert not (folder / "solutions").exists()
    assert f"Course of viztools {__version__} in {folder}" in out and "viztools lab viztools-course\n" in out


# --------------------------------------------------------------------------------------------------------------
# viztools lab on a course folder
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def exec_calls(monkeypatch):
    """Catch the os.execve that would turn `viztools lab` / `present` into the server."""
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: calls.append((argv, env)))
    monkeypatch.setattr(cli.os, "chdir", lambda path: calls.append(("chdir", path)))
    return calls


def test_lab_writes_the_course_where_there_is_none_and_opens_lecture_00(tmp_path, capsys, exec_calls):
    folder = tmp_path / "course"
    assert main(["lab", str(folder), "--port", "8899", "--token", "tok-4242", "--no-browser"]) == 0
    printed = capsys.readouterr().out
    assert course.is_course(folder) and "new" in printed
    (argv, env), = exec_calls
    assert str(folder / "lectures" / course.FIRST_LECTURE) in argv and f"--ServerApp.root_dir={folder}" in argv
    assert "http://localhost:8899/lab/tree/lectures/00_getting_started.ipynb?token=tok-4242" in printed
    assert env["JUPYTER_TOKEN"] == "tok-4242" and "tok-4242" not in " ".join(argv)

    exec_calls.clear()  # a second start leaves the course alone
    edit(folder / "lectures" / "03_occlusion.ipynb", "mine")
    assert main(["lab", str(folder), "--port", "8899", "--no-browser"]) == 0
    printed = capsys.readouterr().out
    assert "Course of viztools" not in printed and source_of(folder / "lectures" / "03_occlusion.ipynb") == "mine"


def test_lab_serves_a_folder_of_notebooks_as_it_is(tmp_path, capsys, exec_calls):
    (tmp_path / "mine.ipynb").write_bytes(notebook("1"))
    assert main(["lab", str(tmp_path), "--port", "8899", "--no-browser"]) == 0
    assert not course.is_course(tmp_path) and not (tmp_path / "lectures").exists()
    assert main(["lab", str(REPO / "lectures"), "--port", "8899", "--no-browser"]) == 0  # make lab
    assert str(REPO / "lectures" / course.FIRST_LECTURE) in exec_calls[-1][0]
    assert not course.is_course(REPO / "lectures")


def test_lab_says_when_the_course_is_older_than_viztools(tmp_path, capsys, exec_calls):
    write_course(tmp_path, files=release("0.0.1"), version="0.0.1")
    assert main(["lab", str(tmp_path), "--port", "8899", "--no-browser"]) == 0
    assert f"written by viztools 0.0.1; you have {__version__}" in capsys.readouterr().out


def test_lab_default_folder_in_a_course_and_outside(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "SOURCE_ROOT", tmp_path / "no-clone")
    assert cli.default_lab_folder(tmp_path) == tmp_path / course.DEFAULT_FOLDER
    write_course(tmp_path / "c", files=release("0.1.0"))
    assert cli.default_lab_folder(tmp_path / "c") == tmp_path / "c"  # in the course folder itself
    (tmp_path / "mine.ipynb").write_bytes(notebook("1"))
    assert cli.default_lab_folder(tmp_path) == tmp_path  # a folder of one's own notebooks
    write_course(tmp_path / course.DEFAULT_FOLDER, files=release("0.1.0"))
    assert cli.default_lab_folder(tmp_path) == tmp_path / course.DEFAULT_FOLDER  # unless the course is there
    assert cli.lab_folder(tmp_path / "c") == (tmp_path / "c", False)
    assert cli.lab_folder(tmp_path / "empty") == (tmp_path / "empty", True)


# --------------------------------------------------------------------------------------------------------------
# viztools present
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["3", "03", "occlusion", "OCCL"])
def test_find_lecture_by_number_or_name(query):
    lectures = course.course_notebooks(REPO / "lectures")
    assert find_lecture(query, lectures).name == "03_occlusion.ipynb"


def test_find_lecture_ignores_versioned_copies(tmp_path):
    write_course(tmp_path, files=release("0.1.0"), version="0.1.0")
    edit(tmp_path / "lectures" / "03_occlusion.ipynb", "mine")
    write_course(tmp_path, files=release("0.2.0", lectures__03_occlusion="v2"), version="0.2.0")
    assert (tmp_path / "lectures" / "03_occlusion.v0.2.0.ipynb").is_file()
    assert find_lecture("3", course.course_notebooks(tmp_path / "lectures")).name == "03_occlusion.ipynb"


@pytest.mark.parametrize(("query", "message"), [("42", "No lecture '42'"), ("tsne_deep", "No lecture"),
                                                ("i", "matches several lectures")])
def test_present_unknown_lecture_lists_the_lectures(capsys, query, message):
    assert main(["present", query, str(REPO / "lectures")]) == 2
    error = capsys.readouterr().err
    assert message in error and "  03_occlusion\n" in error and "  09_adversarial" in error


def test_present_serves_the_lecture_with_voila(tmp_path, capsys, exec_calls):
    write_course(tmp_path, files=release("0.1.0"))
    assert main(["present", "3", str(tmp_path), "--port", "8765", "--token", "tok-4242", "--no-browser"]) == 0
    chdir, (argv, env) = exec_calls
    notebook_path = tmp_path / "lectures" / "03_occlusion.ipynb"
    assert chdir == ("chdir", notebook_path.parent)
    assert argv[1:4] == ["-m", "voila", str(notebook_path)]
    assert {"--port=8765", "--no-browser", "--template=viztools", "--Voila.auto_token=True",
            "--progressive_rendering=True"} <= set(argv)
    assert env["JUPYTER_TOKEN"] == "tok-4242" and "tok-4242" not in " ".join(argv)
    assert env["JUPYTER_PATH"].split(os.pathsep)[0] == str(cli.PRESENT_TEMPLATE_ROOT)
    assert "http://localhost:8765/?token=tok-4242" in capsys.readouterr().out


def test_present_finds_lectures_in_a_course_a_clone_or_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "SOURCE_ROOT", tmp_path / "no-clone")
    write_course(tmp_path / "c", files=release("0.1.0"))
    assert cli.lecture_folder(tmp_path / "c") == tmp_path / "c" / "lectures"
    assert cli.lecture_folder(tmp_path / "c" / "lectures") == tmp_path / "c" / "lectures"
    assert cli.lecture_folder(None, tmp_path / "c") == tmp_path / "c" / "lectures"  # run inside the course
    assert cli.lecture_folder(None, tmp_path) == course.course_source() / "lectures"  # nothing here: shipped ones
    with pytest.raises(CourseError, match="viztools course"):
        cli.lecture_folder(tmp_path / "empty")


def test_present_template_drops_exactly_the_cdn_links_voilas_template_has():
    """Voila's lab template asks a CDN for Font Awesome (already in Voila's own bundle); ours removes those links.
    Should Voila change them, this fails instead of the removal silently doing nothing."""
    voila_paths = pytest.importorskip("voila.paths")
    ours = (cli.PRESENT_TEMPLATE_ROOT / "voila" / "templates" / cli.PRESENT_TEMPLATE / "index.html.j2").read_text()
    removed = [line.split("replace('", 1)[1].split("', '')")[0] for line in ours.splitlines() if "replace('" in line]
    lab = Path(voila_paths.collect_template_paths(["voila"], "lab", prune=True)[0]) / "index.html.j2"
    theirs = lab.read_text()
    assert len(removed) == 2 and all(link in theirs for link in removed)
    assert [line.strip() for line in theirs.splitlines() if "cdn." in line] == removed


# --------------------------------------------------------------------------------------------------------------
# The wheel: a fresh environment gets a course that runs and grades
# --------------------------------------------------------------------------------------------------------------

RUN_LECTURE = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
nb.cells.append(nbformat.v4.new_code_cell("import sys, viztools; print('FROM', viztools.__file__, sys.executable)"))
folder = str(__import__("pathlib").Path(sys.argv[1]).parent)
NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
print("".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs))
"""


def _build_wheel(tmp_path: Path) -> Path:
    """Build the sdist from a copy of the sources (as `python -m build` would), then the wheel from the sdist."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "_course", ".ipynb_checkpoints")
    for name in ("viztools", "lectures", "exercises", "solutions"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    sdist = subprocess.run([sys.executable, "-c", "from setuptools import build_meta; "
                            "print(build_meta.build_sdist('dist'))"], cwd=source, capture_output=True, text=True)
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    with tarfile.open(source / "dist" / sdist.stdout.split()[-1]) as archive:
        names = archive.getnames()
        assert any(n.endswith("lectures/00_getting_started.ipynb") for n in names)
        assert not any("solutions" in n for n in names)
        archive.extractall(tmp_path / "sdist", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    unpacked = next((tmp_path / "sdist").iterdir())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "wheels"), str(unpacked)], check=True, capture_output=True)
    return next((tmp_path / "wheels").glob("viztools-*.whl"))


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="the fresh environment's scripts are in bin/ (POSIX)")
def test_the_wheel_installs_a_course_that_runs_and_grades(tmp_path):
    steps, times = ["build+install", "import", "course", "lecture 00", "grading's rest"], [time.monotonic()]  # -s
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "viztools/_course/lectures/00_getting_started.ipynb" in names
    assert "viztools/_course/exercises/03_occlusion.ipynb" in names
    assert "viztools/_voila/voila/templates/viztools/index.html.j2" in names
    assert not [n for n in names if "solution" in n.lower()]

    # A fresh environment with viztools from the wheel; the other packages come from this one (.pth, no network).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "viztools-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    times.append(time.monotonic())
    student = tmp_path / "student"
    student.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIZTOOLS_WEIGHTS_DIR", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"

    def run(*command: str | Path) -> str:
        result = subprocess.run([str(c) for c in command], cwd=student, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    installed = run(python, "-c", "import viztools; print(viztools.__file__)").strip()
    assert installed.startswith(site) and not installed.startswith(str(REPO))

    times.append(time.monotonic())
    printed = run(venv / "bin" / "viztools", "course")
    folder = student / course.DEFAULT_FOLDER
    assert f"Course of viztools {__version__} in {folder}" in printed
    assert sorted(p.name for p in (folder / "lectures").iterdir()) == sorted(
        p.name for p in (REPO / "lectures").glob("[0-9][0-9]_*.ipynb"))
    assert not (folder / "solutions").exists()

    times.append(time.monotonic())
    # The installed `viztools grade` grades the student's folder (a finished exercise: full marks, the untouched
    # one: zero with feedback) while lecture 00 runs there (the two overlap to save time).
    exercise = folder / "exercises" / "03_occlusion.ipynb"
    blank = student / "untouched" / "03_occlusion.ipynb"
    blank.parent.mkdir()
    shutil.copy2(exercise, blank)
    shutil.copy2(REPO / "solutions" / "03_occlusion.ipynb", exercise)
    grading = subprocess.Popen([str(venv / "bin" / "viztools"), "grade", str(exercise), str(blank), "--jobs", "2",
                                "--json"], cwd=student, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        # Lecture 00 runs in the installed course folder, on GlyphNet (no ImageNet weights folder), from the wheel.
        outputs = run(python, "-c", RUN_LECTURE, folder / "lectures" / course.FIRST_LECTURE)
        times.append(time.monotonic())
    finally:
        graded, errors = grading.communicate(timeout=600)
    times.append(time.monotonic())
    assert "auto -> glyphnet" in outputs
    assert f"FROM {site}/viztools/__init__.py {python}" in outputs

    assert grading.returncode == 1, f"viztools grade: exit {grading.returncode}\n{graded}\n{errors}"  # 1: some failed
    results = {Path(r["path"]).resolve(): r for r in json.loads(graded)["results"]}
    solved, untouched = results[exercise.resolve()], results[blank.resolve()]
    assert solved["status"] == "graded" and solved["score"] == solved["max_score"] > 0
    assert untouched["status"] == "graded" and untouched["score"] == 0
    assert untouched["checks"] and all(check["feedback"] for check in untouched["checks"])
    print("seconds:", {step: round(b - a, 1) for step, a, b in zip(steps, times[:-1], times[1:], strict=True)})

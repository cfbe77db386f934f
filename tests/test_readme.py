"""The README's example runs as printed, and CI runs the README's test command."""
import contextlib
import io
import re
from pathlib import Path

from h3r._compat import tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```bash\n(.*?)```", README, re.S)
    assert match, f"README.md has no ```bash block after {marker}"
    return match.group(1).strip()


def test_readme_example_prints_what_it_says():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    claimed = re.search(r"print\(coords\)\s+# (tensor\(.*?\)): lossless", code).group(1)
    assert " ".join(printed.split()).startswith(" ".join(claimed.split()))


def test_ci_runs_the_readme_test_command():
    command = _block_after("<!-- test-command -->")
    assert "pytest" in command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in ci  # .ci/run extracts the command from README.md


def test_readme_main_command_runs_h3r_train():
    assert _block_after("<!-- main-command -->").endswith("h3r train")


def test_readme_states_the_python_range_and_every_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floor = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1)
    assert f"(Python {floor} or later)" in README
    for extra in project["optional-dependencies"]:
        assert f"`{extra}`" in README, f"README.md does not mention the extra {extra!r}"

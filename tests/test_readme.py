"""The README's Python example runs as written (on the shipped sample)."""
import re

from conftest import REPO


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    code = code.replace("epochs=1,", "epochs=1, steps_per_epoch=20,")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "mnist_gloro.keras").exists()

"""Programs as LLMs write them: notebook habits (last expression, display, IPython magics), whole pandas
tables, tracebacks and short errors that point at the program's own line, cut output that says so,
and code in an untagged Markdown fence. Through the API (POST /runcode, a session's cells)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

COLUMNS = [f"metric_{name}" for name in "abcdefghijkl"]  # twelve: over pandas' 20-character-wide default view
FRAME = (
    "import numpy as np\n"
    "import pandas as pd\n"
    "rng = np.random.default_rng(7)\n"
    f"df = pd.DataFrame(rng.normal(1000, 250, size=(40, 12)), columns={COLUMNS!r})\n"
)


def run(client: FlaskClient, code: str, **fields: Any) -> dict[str, Any]:
    """POST /runcode; the answer's body."""
    response = client.post("/runcode", json={"code": code, **fields})
    assert response.status_code in (200, 504), response.get_data(as_text=True)
    return response.get_json()


class Cells:
    """A session through the API, cell by cell."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        response = client.post("/sessions")
        assert response.status_code == 201, response.get_json()
        self.id = response.get_json()["session_id"]

    def run(self, code: str, language: str = "python") -> dict[str, Any]:
        """One cell; its answer's body."""
        response = self.client.post(f"/sessions/{self.id}/runcode", json={"code": code, "languageType": language})
        assert response.status_code in (200, 504), response.get_data(as_text=True)
        return response.get_json()


@pytest.fixture
def cells(client: FlaskClient) -> Iterator[Cells]:
    """A fresh session, deleted afterwards."""
    session = Cells(client)
    yield session
    client.delete(f"/sessions/{session.id}")


def one_line_with_every_column(text: str) -> bool:
    """Whether one line of the text holds the header of all twelve columns (none hidden behind `...`)."""
    return any(all(column in line for column in COLUMNS) for line in text.splitlines()) and "..." not in text


# --- the last expression and display() -------------------------------------------------------------

def test_a_program_ending_with_an_expression_shows_it_in_result(client: FlaskClient) -> None:
    code = ("import pandas as pd\n"
            "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'people': [709000, 10092000, 7764000]})\n"
            "display('Largest cities:')\n"
            "display(df.shape)\n"
            "df.head()")
    body = run(client, code)
    assert body["status"] == "ok", body
    assert body["output"] == "Largest cities:\n(3, 2)\n"
    assert body["result"].split("\n")[0].split() == ["city", "people"]
    assert "Lima" in body["result"] and "10092000" in body["result"]
    assert run(client, "x = 6 * 7\nprint('computed')")["result"] is None, "no expression last: no result"


@pytest.mark.parametrize("code, result", [
    ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);", None),
    ("x = 6 * 7\nx;  # quiet", None),
    ("x = 6 * 7\nx; x + 1", "43"),
    ("s = 'a;b'\ns", "'a;b'"),
    ("word = '中文'; word", "'中文'"),
], ids=["plot-then-semicolon", "semicolon-and-comment", "semicolon-between", "semicolon-in-a-string",
        "unicode-before"])
def test_a_last_expression_followed_by_a_semicolon_shows_nothing(client: FlaskClient, code: str,
                                                                 result: str | None) -> None:
    """As in a notebook, where `plt.plot(x);` shows no list of Line2D objects."""
    assert run(client, code)["result"] == result


def test_display_from_ipython_works_without_a_notebook(client: FlaskClient) -> None:
    code = ("from IPython.display import display\n"
            "import pandas as pd\n"
            "display(pd.DataFrame({'a': [1, 2]}))\n"
            "display('done')")
    body = run(client, code)
    assert body["status"] == "ok", body
    assert body["output"].split() == ["a", "0", "1", "1", "2", "done"]


# --- IPython magics ------------------------------------------------------------------------------

def test_setup_magics_are_skipped_and_timing_magics_run_the_statement_once(client: FlaskClient) -> None:
    code = ("%matplotlib inline\n"
            "%config InlineBackend.figure_format = 'retina'\n"
            "%load_ext autoreload\n"
            "%autoreload 2\n"
            "import matplotlib.pyplot as plt\n"
            "calls = []\n"
            "%time total = sum(range(1_000_000))\n"
            "%timeit -n 100 -r 3 calls.append(1)\n"
            "width = (17\n"
            "% 5)  # a modulo on its own line inside brackets stays a modulo\n"
            "plt.plot([1, 2, 3], [2, 4, 1])\n"
            "print(total, len(calls), width)\n"
            "%time total // 1000")
    body = run(client, code)
    assert body["status"] == "ok", body
    lines = body["output"].splitlines()
    assert "499999500000 1 2" in lines, "each timed statement ran once"
    assert sum(line.startswith("Wall time: ") for line in lines) == 2
    assert any(line.endswith("per loop (1 run, 1 loop: the sandbox runs the statement once)") for line in lines)
    assert body["result"] == "499999500", "a timed last expression is still the result"
    assert list(body["images"]) == ["figure_1.png"]


def test_installs_are_answered_on_stderr_and_the_program_goes_on(client: FlaskClient) -> None:
    code = ("%pip install seaborn scikit-learn\n"
            "!pip install -q some-package-nobody-has==1.0\n"
            "import sys\n"
            "!{sys.executable} -m pip install statsmodels\n"
            "import seaborn as sns\n"
            "print('seaborn', sns.__version__ > '0')")
    body = run(client, code)
    assert body["status"] == "ok", body
    assert body["output"] == "seaborn True\n"
    notes = body["stderr"].splitlines()
    assert len(notes) == 3 and all(note.startswith("pip install: packages cannot be installed at run time")
                                   for note in notes), notes
    assert "already installed: seaborn " in notes[0] and "scikit-learn " in notes[0]
    assert "not available: some-package-nobody-has" in notes[1]
    assert "Installed: numpy, pandas" in notes[2] and len(notes[2]) < 400


def test_shell_lines_run_as_ipython_runs_them(client: FlaskClient) -> None:
    code = ("print('before')\n"
            "!echo \"it's written\" > notes.txt && echo shell says hi\n"
            "!ls\n"
            "for name in ['a', 'b']:\n"
            "    !touch {name}.csv $name.txt\n"  # Python values in the command, as IPython expands them
            "!cat notes.txt; echo \"${HOME}\" | awk '{print $1}'; exit 3\n"
            "print('after', _exit_code)")
    body = run(client, code)
    assert body["status"] == "ok", body
    assert body["output"] == "before\nshell says hi\nnotes.txt\nit's written\n/workspace\nafter 3\n"
    assert sorted(body["files"]) == ["a.csv", "a.txt", "b.csv", "b.txt", "notes.txt"]


def test_cell_magics_open_a_program(client: FlaskClient) -> None:
    timed = run(client, "%%time\nimport math\nmath.factorial(20)")
    assert (timed["status"], timed["result"]) == ("ok", "2432902008176640000"), timed
    assert "Wall time: " in timed["output"]
    bash = run(client, "%%bash\necho from bash\nls /nonexistent-folder")
    assert (bash["status"], bash["exit_code"], bash["output"]) == ("error", 2, "from bash\n"), bash
    assert bash["error"] == "the %%bash cell exited with code 2"
    written = run(client, "%%writefile helper.py\ndef double(x):\n    return 2 * x\n")
    assert (written["status"], written["output"]) == ("ok", "Writing helper.py\n") and "helper.py" in written["files"]
    html = run(client, "%%html\n<b>bold</b>")
    assert html["status"] == "error" and html["error"].startswith("%%html is a notebook cell magic"), html


# --- pandas tables ------------------------------------------------------------------------------

def test_a_wide_frame_shows_every_column(client: FlaskClient) -> None:
    body = run(client, FRAME + "print(df.describe())\ndf.describe()")
    assert body["status"] == "ok", body
    assert one_line_with_every_column(body["output"]), body["output"]
    assert one_line_with_every_column(body["result"]), body["result"]


def test_pandas_is_not_imported_for_a_program_that_does_not_use_it(
        run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox("import sys\nprint('pandas' in sys.modules)")
    # A warm sandbox has pandas loaded ahead (on purpose); a cold one must not load it for the display options.
    assert report["stdout"] == f"{report['warm']}\n", report


# --- tracebacks and errors ----------------------------------------------------------------------

def test_the_traceback_shows_the_programs_lines_and_error_is_one_line(client: FlaskClient) -> None:
    code = ("def average(values):\n"
            "    total = sum(values)\n"
            "    return total / len(values)\n"
            "\n"
            "print(average([]))\n")
    body = run(client, code)
    assert body["status"] == "error"
    assert body["error"] == "ZeroDivisionError: division by zero (line 3: return total / len(values))"
    assert 'File "<code>", line 5, in <module>\n    print(average([]))\n' in body["stderr"]
    assert 'File "<code>", line 3, in average\n    return total / len(values)\n' in body["stderr"]


def test_an_error_inside_a_library_names_the_programs_line(client: FlaskClient) -> None:
    code = ("import pandas as pd\n"
            "df = pd.DataFrame({'region': ['north', 'south'], 'sales': [10, 20]})\n"
            "print(df['revenue'].sum())\n")
    body = run(client, code)
    assert body["status"] == "error"
    assert body["error"] == "KeyError: 'revenue' (line 3: print(df['revenue'].sum()))"
    assert "pandas/core" in body["stderr"] and len(body["stderr"]) > 10 * len(body["error"])
    syntax = run(client, "%matplotlib inline\nfor i in range(3)\n    print(i)")
    assert syntax["error"] == "SyntaxError: expected ':' (line 2: for i in range(3))", syntax


@pytest.mark.parametrize("code", [
    "import seaborn as sns\ntips = sns.load_dataset('tips')",
    "import urllib.request\nurllib.request.urlopen('https://example.com/data.csv')",
    "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=5)",
    "import pandas as pd\ndf = pd.read_csv('https://example.com/data.csv')",
    "import requests\ndata = requests.get('https://api.example.com/prices', timeout=10).json()",
], ids=["seaborn-dataset", "urlopen", "connect-by-address", "pandas-url", "requests"])
def test_reaching_for_the_network_says_there_is_none(client: FlaskClient, code: str) -> None:
    response = client.post("/runcode", json={"code": code})
    body = response.get_json()
    assert body["status"] == "error" and "the sandbox has no network" in body["error"], body


def test_progress_bars_and_styled_tables_work(client: FlaskClient) -> None:
    code = ("from tqdm import tqdm\nimport pandas as pd\n"
            "total = sum(i for i in tqdm(range(100)))\n"
            "html = pd.DataFrame({'a': [1, 3, 2]}).style.highlight_max().to_html()\n"
            "print(total, '<table' in html)")
    body = client.post("/runcode", json={"code": code}).get_json()
    assert (body["status"], body["output"]) == ("ok", "4950 True\n"), body


def test_a_program_error_that_is_not_about_the_network_has_no_such_note(client: FlaskClient) -> None:
    body = client.post("/runcode", json={"code": "raise TimeoutError('my own')"}).get_json()
    assert body["error"].startswith("TimeoutError: my own") and "network" not in body["error"], body


def test_a_bash_error_is_its_last_line_of_stderr(client: FlaskClient) -> None:
    body = run(client, "echo copying\ncp missing.txt out.txt", languageType="bash")
    assert body["status"] == "error"
    assert body["error"] == "cp: cannot stat 'missing.txt': No such file or directory (exit code 1)"


# --- output cut at the cap ------------------------------------------------------------------------

def test_output_cut_at_the_cap_ends_with_a_notice(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_output_bytes=4096).test_client()
    body = run(client, "for i in range(10_000):\n    print(f'row {i}')")
    assert body["status"] == "output_limit"
    assert body["output"].startswith("row 0\nrow 1\n") and len(body["output"]) <= 4096
    assert body["output"].endswith("\n[output cut at 4096 bytes: the program printed more]")


# --- fences -------------------------------------------------------------------------------------

def test_code_in_an_untagged_fence_inside_prose_runs(client: FlaskClient) -> None:
    body = run(client, "Here is the code:\n```\nprint(6 * 7)\n```\nIt prints 42.")
    assert (body["status"], body["output"]) == ("ok", "42\n"), body


# --- the same habits in a session -----------------------------------------------------------------

def test_a_session_takes_notebook_cells(cells: Cells) -> None:
    first = cells.run("%matplotlib inline\n%config InlineBackend.figure_format = 'retina'\n" + FRAME)
    assert first["status"] == "ok", first
    described = cells.run("df.describe()")
    assert one_line_with_every_column(described["result"]), described["result"]
    timed = cells.run("%%time\ntotal = len(df) * 2\ntotal")
    assert (timed["status"], timed["result"]) == ("ok", "80") and "Wall time: " in timed["output"], timed
    mixed = cells.run("!echo from the shell\n%pip install seaborn\nfrom IPython.display import display\n"
                      "%time shape = df.shape\ndisplay(shape)")
    assert mixed["status"] == "ok", mixed
    assert mixed["output"].startswith("from the shell\nCPU times: ") and mixed["output"].endswith("(40, 12)\n")
    assert mixed["stderr"].startswith("pip install: packages cannot be installed at run time")
    assert cells.run("def ratio(a, b):\n    return a / b")["status"] == "ok"  # cell 5
    failed = cells.run("x = 1\nratio(x, 0)")
    assert failed["error"] == "ZeroDivisionError: division by zero (cell 5, line 2: return a / b)", failed
    assert 'File "<cell 6>", line 2, in <module>\n    ratio(x, 0)\n' in failed["stderr"]
    assert 'File "<cell 5>", line 2, in ratio\n    return a / b\n' in failed["stderr"]
    bash = cells.run("%%bash\necho bash cell\nexit 4")
    assert (bash["status"], bash["exit_code"], bash["output"]) == ("error", 4, "bash cell\n"), bash
    written = cells.run("%%writefile helper.py\ndef double(x):\n    return 2 * x")
    assert (written["status"], written["output"]) == ("ok", "Writing helper.py\n"), written
    assert cells.run("import helper\nhelper.double(len(df))")["result"] == "80", "the module it wrote is importable"


def test_a_program_imports_a_module_it_was_given(client: FlaskClient) -> None:
    helper = base64.b64encode(b"def greet(name):\n    return f'hello {name}'\n").decode()
    body = run(client, "from helper import greet\ngreet('sandbox')",
               files=[{"path": "helper.py", "content_base64": helper}])
    assert (body["status"], body["result"]) == ("ok", "'hello sandbox'"), body


def test_files_saved_where_chatgpt_keeps_them_come_back(client: FlaskClient) -> None:
    """ChatGPT's interpreter keeps files in /mnt/data, and code written for it saves there."""
    code = ("import pandas as pd, matplotlib.pyplot as plt\n"
            "pd.read_csv('/mnt/data/in.csv').assign(c=3).to_csv('/mnt/data/out.csv', index=False)\n"
            "plt.plot([1, 2])\nplt.savefig('/mnt/data/chart.png')\n")
    body = run(client, code, files=[{"path": "in.csv", "content_base64": base64.b64encode(b"a,b\n1,2\n").decode()}])
    assert body["status"] == "ok", body
    assert list(body["files"]) == ["out.csv"] and list(body["images"]) == ["chart.png"], body
    saved = client.get(body["files"]["out.csv"].removeprefix("http://localhost")).data
    assert saved == b"a,b,c\n1,2,3\n"
    body = run(client, "cd /mnt/data && echo hi > note.txt && pwd -P", languageType="bash")
    assert (body["output"], list(body["files"])) == ("/workspace\n", ["note.txt"]), body

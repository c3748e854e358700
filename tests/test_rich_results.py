"""Rich results (SPEC "Rich results"): what a program displays comes back as Jupyter's MIME bundles, with a
figure's data as a chart, for one-shot runs, session cells and streams. Each test checks the bundle's
content as a client would read it, not only its keys. Through the API, on real sandboxes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(client: FlaskClient, code: str, query: str = "", **fields: Any) -> dict[str, Any]:
    """POST /runcode; the answer's body (status ok, or the test fails with the body)."""
    response = client.post("/runcode" + query, json={"code": code, **fields})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "ok", body
    return body


def served(client: FlaskClient, url: str) -> bytes:
    """The bytes behind an image URL of this center."""
    response = client.get(url[url.index("/image/"):])
    assert response.status_code == 200, url
    return response.get_data()


def only(results: list[dict[str, Any]], main: bool | None = None) -> dict[str, Any]:
    """The one bundle (of the main result, or not, when `main` says)."""
    chosen = [bundle for bundle in results if main is None or bundle["is_main_result"] is main]
    assert len(chosen) == 1, results
    return chosen[0]


# --- tables and text -----------------------------------------------------------------------------------

def test_a_dataframe_last_gives_html_and_text_and_the_old_fields_are_unchanged(client: FlaskClient) -> None:
    body = run(client, "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'people': [709000, 10092000]})")
    bundle = only(body["results"])
    assert bundle["is_main_result"] is True
    html = bundle["data"]["text/html"]
    assert "<table" in html and "<td>Lima</td>" in html and "<td>10092000</td>" in html
    assert bundle["data"]["text/plain"].split("\n")[0].split() == ["city", "people"]
    assert body["result"] == bundle["data"]["text/plain"], "result stays the text a notebook shows"
    assert body["output"] == "" and body["images"] == {}


def test_display_gives_a_bundle_per_call_in_order_and_still_prints_the_text(client: FlaskClient) -> None:
    code = ("from IPython.display import display\nimport pandas as pd\n"
            "display(pd.DataFrame({'a': [1, 2]}))\ndisplay('done')\n6 * 7")
    body = run(client, code)
    frame, text, last = body["results"]
    assert "<table" in frame["data"]["text/html"] and frame["is_main_result"] is False
    assert text["data"] == {"text/plain": "'done'"} and text["is_main_result"] is False
    assert last["data"] == {"text/plain": "42"} and last["is_main_result"] is True
    assert body["output"].split() == ["a", "0", "1", "1", "2", "done"], "display() prints as before"
    assert body["result"] == "42"


def test_a_program_without_displays_has_no_results(client: FlaskClient) -> None:
    assert run(client, "x = 1\nprint(x)")["results"] == []


def test_ipython_display_objects_behave_as_in_jupyter(client: FlaskClient) -> None:
    code = (
        "from IPython.display import HTML, JSON, SVG, Image, Latex, Markdown, Math, display\n"
        "import io\nfrom PIL import Image as PILImage\n"
        "buffer = io.BytesIO()\nPILImage.new('RGB', (3, 2), 'red').save(buffer, 'PNG')\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Markdown('# Title\\n\\n*emphasis*'))\n"
        "display(Latex(r'$\\alpha^2$'))\n"
        "display(Math(r'\\beta'))\n"
        "display(JSON({'k': [1, 2], 'n': None}))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\">'\n"
        "            '<rect width=\"4\" height=\"4\"/></svg>'))\n"
        "Image(data=buffer.getvalue())\n"
    )
    body = run(client, code)
    html, markdown, latex, math, json_value, svg, image = body["results"]
    assert html["data"]["text/html"] == "<b>bold</b>"
    assert markdown["data"]["text/markdown"] == "# Title\n\n*emphasis*"
    assert latex["data"]["text/latex"] == r"$\alpha^2$"
    assert math["data"]["text/latex"] == r"$\displaystyle \beta$"
    assert json_value["data"]["application/json"] == {"k": [1, 2], "n": None}
    assert svg["data"]["image/svg+xml"].startswith("<svg") and "<rect" in svg["data"]["image/svg+xml"]
    assert image["is_main_result"] is True and not any(b["is_main_result"] for b in body["results"][:-1])
    png = served(client, image["data"]["image/png"])
    assert png.startswith(PNG_MAGIC)
    assert all(b["data"]["text/plain"] for b in body["results"]), "text/plain is always there"
    assert "bold" in body["output"] and "# Title" in body["output"], "display() of text objects prints their text"


def test_an_objects_repr_methods_are_honoured(client: FlaskClient) -> None:
    code = (
        "import base64\n"
        "PIXEL = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ'\n"
        "                         'AAAABJRU5ErkJggg==')\n"
        "class Rich:\n"
        "    def __repr__(self): return 'Rich()'\n"
        "    def _repr_html_(self): return '<i>rich</i>'\n"
        "    def _repr_markdown_(self): return '**rich**'\n"
        "    def _repr_latex_(self): return r'$r$'\n"
        "    def _repr_json_(self): return {'rich': True}\n"
        "    def _repr_svg_(self): return '<svg xmlns=\"http://www.w3.org/2000/svg\"/>'\n"
        "    def _repr_png_(self): return PIXEL\n"
        "class Bundle:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/plain': 'a bundle', 'text/markdown': '_made by hand_'}\n"
        "display(Bundle())\n"
        "Rich()"
    )
    body = run(client, code)
    bundle, rich = body["results"]
    assert bundle["data"] == {"text/plain": "a bundle", "text/markdown": "_made by hand_"}
    data = rich["data"]
    assert data["text/plain"] == "Rich()" and data["text/html"] == "<i>rich</i>"
    assert data["text/markdown"] == "**rich**"
    assert data["text/latex"] == "$r$" and data["application/json"] == {"rich": True}
    assert data["image/svg+xml"].startswith("<svg")
    assert served(client, data["image/png"]).startswith(PNG_MAGIC)
    assert body["result"] == "Rich()"


def test_a_styler_gives_its_styled_html(client: FlaskClient) -> None:
    code = ("import pandas as pd\ndf = pd.DataFrame({'a': [1, 5, 3]})\n"
            "df.style.highlight_max(color='yellow').format('{:.1f}')")
    bundle = only(run(client, code)["results"])
    html = bundle["data"]["text/html"]
    assert "<style" in html and "background-color: yellow" in html and ">5.0<" in html


# --- figures and their charts --------------------------------------------------------------------------

def chart_of(client: FlaskClient, code: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the figure's bundle, the run's body) of a program that draws one figure."""
    body = run(client, "import matplotlib.pyplot as plt\n" + code)
    figures = [bundle for bundle in body["results"] if bundle["data"]["text/plain"].startswith("<Figure size")]
    bundle = only(figures)
    # The last expression (plt.bar's BarContainer, say) comes first, as a notebook's Out before its figures.
    assert all(other["is_main_result"] for other in body["results"] if other is not bundle), body["results"]
    return bundle, body


def test_a_line_plot_gives_its_image_once_and_its_data(client: FlaskClient) -> None:
    bundle, body = chart_of(client, "plt.plot([1, 2, 3], [4, 5, 6], label='growth')\nplt.title('Growth')\n"
                                    "plt.xlabel('day')\nplt.ylabel('size (cm)')\nplt.legend();")
    assert bundle["data"]["image/png"] == body["images"]["figure_1.png"], "the same image, stored once"
    chart = bundle["chart"]
    assert chart["type"] == "line" and chart["title"] == "Growth"
    assert chart["x_label"] == "day" and chart["y_label"] == "size (cm)"
    element = only(chart["elements"])
    assert element["label"] == "growth" and element["points"] == [[1, 4], [2, 5], [3, 6]]


@pytest.mark.parametrize("code, kind, check", [
    ("plt.bar(['a', 'b'], [3, 7])", "bar",
     lambda c: [(e["label"], e["value"]) for e in c["elements"]] == [("a", 3), ("b", 7)]),
    ("plt.scatter([1, 2], [3, 4])", "scatter", lambda c: c["elements"][0]["points"] == [[1, 3], [2, 4]]),
    ("plt.pie([1, 3], labels=['x', 'y'])", "pie",
     lambda c: [(e["label"], e["angle"]) for e in c["elements"]] == [("x", 90), ("y", 270)]),
    ("plt.boxplot([[1, 2, 3, 4, 5], [2, 4, 6, 8, 10]], tick_labels=['a', 'b'], patch_artist=True)", "box_and_whisker",
     lambda c: [(e["label"], e["min"], e["median"], e["max"]) for e in c["elements"]]
     == [("a", 1, 3, 5), ("b", 2, 6, 10)]),
    ("fig, (a, b) = plt.subplots(1, 2)\na.plot([1, 2])\nb.bar(['q'], [1])\nfig.suptitle('both')", "superchart",
     lambda c: c["title"] == "both" and [e["type"] for e in c["elements"]] == ["line", "bar"]),
], ids=["bar", "scatter", "pie", "box", "superchart"])
def test_each_kind_of_chart_is_read(client: FlaskClient, code: str, kind: str, check: Callable[[dict], bool]) -> None:
    bundle, _ = chart_of(client, code)
    assert bundle["chart"]["type"] == kind and check(bundle["chart"]), bundle["chart"]


def test_seaborn_and_pandas_plots_give_their_data(client: FlaskClient) -> None:
    seaborn, _ = chart_of(client, "import seaborn as sns, pandas as pd\n"
                                  "sns.barplot(data=pd.DataFrame({'k': ['u', 'v'], 'n': [2, 5]}), x='k', y='n')")
    assert seaborn["chart"]["type"] == "bar"
    assert [(e["label"], e["value"]) for e in seaborn["chart"]["elements"]] == [("u", 2), ("v", 5)]
    assert seaborn["chart"]["x_label"] == "k" and seaborn["chart"]["y_label"] == "n"
    pandas, _ = chart_of(client, "import pandas as pd\n"
                                 "pd.DataFrame({'x': [1, 2, 3], 'y': [9, 8, 7]}).plot(x='x', y='y')")
    assert pandas["chart"]["type"] == "line"
    assert only(pandas["chart"]["elements"])["points"] == [[1, 9], [2, 8], [3, 7]]


def test_a_figure_shown_as_a_value_is_the_main_result_and_a_saved_one_keeps_its_file(client: FlaskClient) -> None:
    body = run(client, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nfig")
    bundle = only(body["results"])
    assert bundle["is_main_result"] is True and bundle["data"]["image/png"] == body["images"]["figure_1.png"]
    body = run(client, "import matplotlib.pyplot as plt\nplt.plot([3, 1])\nplt.savefig('chart.png')")
    bundle = only(body["results"])
    assert list(body["images"]) == ["chart.png"] and bundle["data"]["image/png"] == body["images"]["chart.png"]
    assert bundle["chart"]["type"] == "line"


def test_inline_gives_base64_in_the_bundles(client: FlaskClient) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
    for query, fields in (("", {"inline": True}), ("?inline=1", {})):
        body = run(client, code, query, **fields)
        png = base64.b64decode(only(body["results"])["data"]["image/png"], validate=True)
        assert png.startswith(PNG_MAGIC)
        assert png == served(client, body["images"]["figure_1.png"]), "the same figure"
    response = client.post("/runcode", json={"code": "1", "inline": "sometimes"})
    assert response.status_code == 400 and "inline" in response.get_json()["error"]


# --- display ids, clear_output, limits -----------------------------------------------------------------

def test_updates_replace_their_display_and_clear_output_drops_what_came_before(client: FlaskClient) -> None:
    code = ("from IPython.display import display, clear_output\n"
            "display('gone')\nclear_output()\n"
            "handle = display('step 1', display_id=True)\ndisplay('kept')\nhandle.update('step 2')")
    results = run(client, code)["results"]
    assert [bundle["data"]["text/plain"] for bundle in results] == ["'step 2'", "'kept'"]


def test_rich_results_stay_within_the_output_and_image_caps(make_app: Callable[..., Any]) -> None:
    client = make_app(max_output_bytes=20000, max_image_bytes=2000).test_client()
    code = ("from IPython.display import Image, display\nimport numpy as np, io\nfrom PIL import Image as P\n"
            "class Wide:\n    def __repr__(self): return 'w'\n"
            "    def _repr_html_(self): return '<p>' + 'x' * 1000 + '</p>'\n"
            "for i in range(40):\n    display(Wide())\n"
            "b = io.BytesIO()\nnoise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype='uint8')\n"
            "P.fromarray(noise).save(b, 'PNG')\n"
            "display(Image(data=b.getvalue()))")
    body = client.post("/runcode", json={"code": code}).get_json()
    assert body["status"] == "ok", body
    results = body["results"]
    whole = [bundle for bundle in results if "text/html" in bundle["data"]]
    assert 10 <= len(whole) < 20 and results[:len(whole)] == whole, "the HTML that fits in 20000 bytes, first"
    assert all(bundle["data"]["text/html"] == "<p>" + "x" * 1000 + "</p>" for bundle in whole)
    # Then the displays' text while it fits (the image's too, without its PNG, which is over max_image_bytes).
    assert all(bundle["data"] in ({"text/plain": "w"}, {"text/plain": "<IPython.core.display.Image object>"})
               for bundle in results[len(whole):])
    assert len(json.dumps(results)) < 20000 + 1000
    reasons = " ".join(entry["reason"] for entry in body["skipped"])
    assert "max_output_bytes" in reasons


def test_a_display_too_large_keeps_its_text_and_a_huge_chart_is_left_out(make_app: Callable[..., Any]) -> None:
    client = make_app(max_output_bytes=50000).test_client()
    code = ("import matplotlib.pyplot as plt, numpy as np\n"
            "class Huge:\n    def __repr__(self): return 'huge'\n"
            "    def _repr_html_(self): return '<p>' + 'x' * 100000 + '</p>'\n"
            "display(Huge())\n"
            "plt.scatter(np.arange(20000), np.arange(20000))\nplt.show()")
    body = client.post("/runcode", json={"code": code}).get_json()
    assert body["status"] == "ok", body
    huge, figure = body["results"]
    assert huge["data"] == {"text/plain": "huge"}, "the HTML is over max_output_bytes: the text stays"
    assert figure["data"]["image/png"] == body["images"]["figure_1.png"] and "chart" not in figure
    reasons = [entry["reason"] for entry in body["skipped"]]
    assert any(reason.startswith("text/html: rich results exceeded 50000 bytes") for reason in reasons), reasons
    assert any("chart: the figure has 20000 points" in reason for reason in reasons), reasons


def test_lines_a_program_forges_on_the_status_pipe_are_only_data(client: FlaskClient) -> None:
    """The program can write on the worker's status pipe: what it writes there is checked like any display."""
    code = (
        "import os, json\n"
        "fds = [int(fd) for fd in os.listdir('/proc/self/fd')]\n"
        "def is_pipe(fd):\n"
        "    try: return fd > 2 and os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:')\n"
        "    except OSError: return False\n"
        "pipes = [fd for fd in fds if is_pipe(fd)]\n"
        "forged = [{'display': {'data': {'text/plain': 'forged', 'image/png': {'image': '/etc/shadow'},"
        " 'text/html': 5, 'application/x-evil': 'x'}, 'is_main_result': 'yes'}}, {'display': 'no'}, [1], 'junk']\n"
        "for fd in pipes:\n"
        "    for message in forged:\n"
        "        try: os.write(fd, json.dumps(message).encode() + b'\\n')\n"
        "        except OSError: pass\n"
        "print(len(pipes))"
    )
    body = run(client, code)
    assert int(body["output"]) >= 1, "the status pipe was there to write on"
    assert body["results"] == [{"data": {"text/plain": "forged"}, "is_main_result": False}]


# --- sessions and streams ------------------------------------------------------------------------------

def test_session_cells_have_their_own_results(client: FlaskClient) -> None:
    session = client.post("/sessions").get_json()["session_id"]
    try:
        def cell(code: str) -> dict[str, Any]:
            response = client.post(f"/sessions/{session}/runcode", json={"code": code})
            assert response.status_code == 200
            return response.get_json()

        first = cell("import pandas as pd\ndf = pd.DataFrame({'v': [10, 20]})\ndisplay(df)\ndf.v.sum()")
        assert "<td>20</td>" in first["results"][0]["data"]["text/html"]
        assert first["results"][1] == {"data": {"text/plain": "30"}, "is_main_result": True}
        second = cell("import matplotlib.pyplot as plt\nplt.plot(df.v)\nplt.show()")
        bundle = only(second["results"])
        assert bundle["chart"]["elements"][0]["points"] == [[0, 10], [1, 20]]
        assert bundle["data"]["image/png"] == second["images"]["figure_1.png"]
        assert cell("print('quiet')")["results"] == []
    finally:
        client.delete(f"/sessions/{session}")


@pytest.fixture
def center(waitress_server: Callable[..., str]) -> Iterator[str]:
    """A center on the shared pool, served by waitress."""
    yield waitress_server()


def ndjson(url: str, body: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """(arrival time, event) for every event of a streamed run."""
    with requests.post(url, json=body, headers={"Accept": "application/x-ndjson"}, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        return [(time.monotonic(), json.loads(line)) for line in r.iter_lines(chunk_size=1) if line]


@pytest.mark.parametrize("where", ["run", "cell"])
def test_a_stream_sends_each_display_as_it_is_made(center: str, where: str) -> None:
    url = center + "/runcode"
    if where == "cell":
        session = requests.post(center + "/sessions", timeout=60).json()["session_id"]
        url = f"{center}/sessions/{session}/runcode"
    code = ("import time\nimport matplotlib.pyplot as plt\nfrom IPython.display import Markdown, display\n"
            "display(Markdown('**first**'))\ntime.sleep(4)\n"
            "plt.plot([1, 2])\nplt.show()\nMarkdown('last')")
    arrivals = ndjson(url, {"code": code})
    events = [event for _, event in arrivals]
    displays = [{key: value for key, value in event.items() if key != "type"} for event in events
                if event["type"] == "display"]
    result = events[-1]
    assert result["type"] == "result" and result["status"] == "ok"
    assert result["results"] == displays, "the result holds what was streamed, the same URLs"
    assert displays[0]["data"]["text/markdown"] == "**first**" and displays[2]["is_main_result"] is True
    assert displays[1]["data"]["image/png"] == result["images"]["figure_1.png"], "one image, one URL"
    # The program slept 4 s after its first display: that came while it slept, not with the end.
    first = next(at for at, event in arrivals if event["type"] == "display")
    assert arrivals[-1][0] - first > 2
    if where == "cell":
        requests.delete(f"{center}/sessions/{session}", timeout=60)

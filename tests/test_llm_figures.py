"""Figures as LLM-written programs make them: each comes back once, in order, never blank, Chinese text legible.

Each program is the kind an assistant writes for a data question (saved and shown, styled, titled in
Chinese), sent through POST /runcode or a session cell as a client sends it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CJK_FONT_FILE = "wqy-microhei.ttc"
# The agent collects the top of the working folder; figures saved deeper need it to read the list the
# backend writes (capture_backend.SAVED_LIST).
AGENT_READS_SAVED_LIST = "saved-figures" in (Path(__file__).parent.parent / "sandbox" / "contract.py").read_text()

SALES = (
    "import pandas as pd\n"
    "import numpy as np\n"
    "import matplotlib.pyplot as plt\n"
    "df = pd.DataFrame({'month': pd.date_range('2024-01-01', periods=12, freq='MS'),\n"
    "                   'revenue': np.linspace(120, 240, 12) + np.sin(np.arange(12)) * 15})\n"
    "df['growth'] = df['revenue'].pct_change() * 100\n"
)
# Appended to a program: how many colours the file it saved has (a blank figure has one: white).
COUNT_COLOURS = "from PIL import Image\nprint('colours', len(Image.open({name!r}).convert('RGB').getcolors(1 << 24)))\n"


def run(client: FlaskClient, code: str, **fields: Any) -> dict[str, Any]:
    """POST /runcode; the answer's JSON (HTTP 200 and status ok asserted)."""
    response = client.post("/runcode", json={"code": code, **fields})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ok", (body.get("error"), body["stderr"][-2000:])
    return body


def colours(output: str) -> int:
    """The count COUNT_COLOURS printed."""
    return int(output.split("colours ")[1].split()[0])


def image_bytes(client: FlaskClient, url: str) -> bytes:
    """An image of the answer, as served."""
    response = client.get(url.removeprefix("http://localhost"))
    assert response.status_code == 200
    return response.data


# --- a saved figure comes back once, under its name ---------------------------------------------

@pytest.mark.parametrize("save, images, files", [
    ("plt.savefig('sales_trend.png', dpi=150, bbox_inches='tight')", ["sales_trend.png"], []),
    ("fig.savefig('sales_trend.svg')", ["sales_trend.svg"], []),
    ("plt.savefig('sales_trend.jpg', dpi=80)", ["sales_trend.jpg"], []),
    ("plt.savefig('sales_trend')", ["sales_trend.png"], []),
    ("plt.savefig('report.pdf')", [], ["report.pdf"]),
    ("with open('sales_trend.png', 'wb') as f:\n    fig.savefig(f, format='png')", ["sales_trend.png"], []),
])
def test_a_figure_saved_and_left_open_comes_back_once(client: FlaskClient, save: str, images: list[str],
                                                      files: list[str]) -> None:
    code = SALES + (
        "fig, ax = plt.subplots(figsize=(10, 6))\n"
        "ax.plot(df['month'], df['revenue'], marker='o', label='Revenue')\n"
        "ax.set_title('Monthly Revenue 2024')\n"
        "ax.set_xlabel('Month')\n"
        "ax.set_ylabel('Revenue ($k)')\n"
        "ax.legend()\n"
        "plt.tight_layout()\n"
        f"{save}\n"
        "print('Chart saved')\n"
    )
    body = run(client, code)
    assert list(body["images"]) == images, "not also as figure_1.png"
    assert list(body["files"]) == files
    assert body["output"] == "Chart saved\n"


def test_a_figure_saved_into_a_subfolder_is_not_duplicated(client: FlaskClient) -> None:
    code = SALES + (
        "import os\n"
        "os.makedirs('output', exist_ok=True)\n"
        "plt.figure(figsize=(8, 5))\n"
        "plt.bar(df['month'].dt.strftime('%b'), df['growth'].fillna(0), color='teal')\n"
        "plt.title('Month-over-month growth (%)')\n"
        "plt.savefig('output/growth.png')\n"
        "print(os.listdir('output'))\n"
    )
    body = run(client, code)
    assert body["output"] == "['growth.png']\n"
    assert list(body["images"]) == (["output/growth.png"] if AGENT_READS_SAVED_LIST else []), \
        "returned under its path (once the agent reads the list of saves), never as figure_1.png"


def test_a_figure_saved_into_a_folder_never_made_comes_back(client: FlaskClient) -> None:
    """docs/api.md's own example saves into output/ without making it: a FileNotFoundError lost the chart."""
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.savefig('output/charts/sales.png')\n"
    body = run(client, code)
    assert list(body["images"]) == ["output/charts/sales.png"], body
    outside = client.post("/runcode", json={"code": code.replace("output/charts", "/tmp/nowhere")}).get_json()
    assert outside["status"] == "error" and "/tmp/nowhere" in outside["error"], "only the working folder's are made"


def test_a_figure_changed_after_its_savefig_comes_back_in_its_final_state_too(client: FlaskClient) -> None:
    code = SALES + (
        "plt.plot(df['month'], df['revenue'])\n"
        "plt.savefig('draft.png')\n"
        "plt.axhline(df['revenue'].mean(), color='red', linestyle='--', label='average')\n"
        "plt.legend()\n"
    )
    body = run(client, code)
    assert list(body["images"]) == ["draft.png", "figure_1.png"]
    draft, final = (image_bytes(client, url) for url in body["images"].values())
    assert draft.startswith(PNG_MAGIC) and final.startswith(PNG_MAGIC) and draft != final


def test_saved_then_shown_comes_back_once(client: FlaskClient) -> None:
    code = SALES + (
        "plt.figure(figsize=(10, 6))\n"
        "plt.plot(df['month'], df['revenue'])\n"
        "plt.grid(True, alpha=0.3)\n"
        "plt.savefig('revenue.png', dpi=100)\n"
        "plt.show()\n"
        "plt.close()\n"
    )
    assert list(run(client, code)["images"]) == ["revenue.png"]


# --- plt.show() then savefig: the figure shown, not a blank one ------------------------------------

def test_show_then_savefig_saves_the_figure_shown(client: FlaskClient) -> None:
    code = SALES + (
        "plt.figure(figsize=(10, 6))\n"
        "plt.plot(df['month'], df['revenue'], marker='o')\n"
        "plt.title('Revenue trend')\n"
        "plt.show()\n"
        "plt.savefig('revenue_trend.png', dpi=100, bbox_inches='tight')\n"
        "print('saved to revenue_trend.png')\n"
    ) + COUNT_COLOURS.format(name="revenue_trend.png")
    body = run(client, code)
    assert list(body["images"]) == ["revenue_trend.png"], "once, under the saved name"
    assert colours(body["output"]) > 10, "the plot, not an empty figure"


def test_show_then_savefig_of_the_figure_object_and_a_second_plot(client: FlaskClient) -> None:
    code = SALES + (
        "fig, ax = plt.subplots()\n"
        "ax.plot(df['month'], df['revenue'])\n"
        "plt.show()\n"
        "fig.savefig('first.png')\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"  # after show(), a new figure: not drawn over the first
        "plt.title('second')\n"
        "plt.show()\n"
        "plt.show()\n"  # nothing open: nothing more
        "plt.figure()\n"  # blank, left open: never an image
    ) + COUNT_COLOURS.format(name="first.png")
    body = run(client, code)
    assert list(body["images"]) == ["first.png", "figure_1.png"]
    assert colours(body["output"]) > 10


def test_matplotlib_use_agg_still_shows(client: FlaskClient) -> None:
    code = (
        "import matplotlib\n"
        "matplotlib.use('Agg')  # non-interactive backend\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.show()\n"
        "plt.close()\n"
    )
    body = run(client, code)
    assert list(body["images"]) == ["figure_1.png"] and "non-interactive" not in body["stderr"]


# --- order ------------------------------------------------------------------------------------

@pytest.mark.parametrize("language, code", [
    ("bash", "cat > plot.py <<'EOF'\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.savefig('plot.png')\n"
             "plt.figure()\nplt.plot([3, 2, 1])\nplt.show()\nEOF\npython3 plot.py"),
    ("python", "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import matplotlib.pyplot as plt; "
               "plt.plot([1, 2, 3]); plt.savefig(\"plot.png\"); plt.figure(); plt.plot([3, 2, 1]); plt.show()'], "
               "check=True)"),
])
def test_python_the_program_starts_itself_draws_too(client: FlaskClient, language: str, code: str) -> None:
    """python3 plot.py from bash, or a subprocess: its saved and its shown figures come back (it once
    failed to import the capture backend that MPLBACKEND names)."""
    body = run(client, code, languageType=language)
    assert sorted(body["images"]) == ["figure_1.png", "plot.png"], body


def test_a_figure_displayed_comes_back_as_an_image(client: FlaskClient) -> None:
    body = run(client, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 3, 2])\n"
                       "display(fig)\nplt.close(fig)")
    assert list(body["images"]) == ["figure_1.png"] and "Figure size" not in body["output"], body


def test_a_figure_as_a_cells_value_is_shown_as_an_image(client: FlaskClient) -> None:
    """As a notebook shows `fig`: the image, not "<Figure size 640x480 with 1 Axes>"; once while unchanged."""
    session = client.post("/sessions").get_json()["session_id"]
    cells = f"/sessions/{session}/runcode"
    try:
        first = client.post(cells, json={"code": "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
                                                 "ax.plot([1, 3, 2])"}).get_json()
        assert list(first["images"]) == ["figure_1.png"], first
        again = client.post(cells, json={"code": "ax.set_title('updated')\nfig"}).get_json()
        assert (list(again["images"]), again["result"]) == (["figure_2.png"], None), again
        unchanged = client.post(cells, json={"code": "fig"}).get_json()
        assert (unchanged["images"], unchanged["result"]) == ({}, None), unchanged
    finally:
        client.delete(f"/sessions/{session}")


def test_images_keep_the_order_they_were_made_in(client: FlaskClient) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "x = np.linspace(0, 2 * np.pi, 100)\n"
        "plt.plot(x, np.sin(x))\n"
        "plt.savefig('overview.png')\n"
        "plt.close()\n"
        "for k in range(1, 13):\n"
        "    plt.figure(figsize=(4, 3))\n"
        "    plt.plot(x, np.sin(k * x))\n"
        "    plt.title(f'k = {k}')\n"
        "    plt.show()\n"
        "fig, ax = plt.subplots()\n"
        "ax.hist(np.random.default_rng(0).normal(size=500), bins=30)\n"
    )
    body = run(client, code)
    assert list(body["images"]) == ["overview.png", *(f"figure_{n}.png" for n in range(1, 14))]


# --- Chinese text --------------------------------------------------------------------------------

# Which font file draws 销 in the title, as matplotlib's per-glyph fallback picks it: the first font
# of the title's list that has the glyph.
FONT_OF_TITLE = (
    "from matplotlib import ft2font\n"
    "from matplotlib.font_manager import fontManager\n"
    "chain = fontManager._find_fonts_by_props(ax.title.get_fontproperties())\n"
    "has = [f for f in chain if ord('销') in ft2font.FT2Font(f).get_charmap()]\n"
    "print('font', has[0].rsplit('/', 1)[-1] if has else None)\n"
)


@pytest.mark.parametrize("setup", [
    "",
    "import seaborn as sns\nsns.set_theme()",
    "import seaborn as sns\nsns.set()",
    "import seaborn as sns\nsns.set_style('whitegrid')",
    "import seaborn as sns\nsns.set_theme(style='darkgrid', font='SimHei')",
    "plt.style.use('seaborn-v0_8-darkgrid')",
    "plt.style.use('ggplot')",
    "plt.style.use('fivethirtyeight')",
    "plt.style.use('default')",
    "plt.rcParams['font.family'] = 'SimHei'",
    "plt.rcParams['font.sans-serif'] = ['SimHei']  # 用来正常显示中文标签\n"
    "plt.rcParams['axes.unicode_minus'] = False  # 用来正常显示负号",
    "plt.rcParams['font.sans-serif'] = ['Microsoft YaHei']\nplt.rcParams['font.family'] = 'sans-serif'",
    "plt.rcParams['font.sans-serif'] = ['Arial Unicode MS']\nplt.rcParams['font.family'] = 'sans-serif'",
    "plt.rcParams['font.family'] = ['PingFang SC', 'Heiti TC', 'sans-serif']",
    "import seaborn as sns\nsns.set_theme(style='whitegrid')\nplt.rcParams['font.sans-serif'] = ['SimHei', 'Arial']",
])
def test_chinese_text_renders_whatever_style_or_font_the_program_set(client: FlaskClient, setup: str) -> None:
    code = SALES + setup + "\n" + (
        "fig, ax = plt.subplots(figsize=(10, 6))\n"
        "ax.plot(df['month'], df['revenue'] - 180, marker='o', label='营业收入')\n"
        "ax.set_title('2024年月度销售额趋势', fontsize=16, fontweight='bold')\n"
        "ax.set_xlabel('月份')\n"
        "ax.set_ylabel('销售额（万元）')\n"
        "ax.legend()\n"
        "plt.tight_layout()\n"
        "plt.savefig('销售趋势.png')\n"
    ) + FONT_OF_TITLE
    body = run(client, code)
    assert body["output"] == f"font {CJK_FONT_FILE}\n", "the CJK font draws the Chinese glyphs"
    assert "Glyph" not in body["stderr"] and "findfont" not in body["stderr"], body["stderr"][:2000]
    assert list(body["images"]) == ["销售趋势.png"]


def test_a_windows_font_file_the_program_names_draws_with_the_cjk_font(client: FlaskClient) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "from matplotlib.font_manager import FontProperties\n"
        "font = FontProperties(fname=r'C:\\Windows\\Fonts\\simhei.ttf', size=14)\n"
        "fig, ax = plt.subplots()\n"
        "ax.bar(['一月', '二月'], [3, 5])\n"
        "ax.set_title('各月销量', fontproperties=font)\n"
        "plt.savefig('sales.png')\n"
    ) + FONT_OF_TITLE
    body = run(client, code)
    assert body["output"] == f"font {CJK_FONT_FILE}\n" and "Glyph" not in body["stderr"]


# --- sessions -------------------------------------------------------------------------------------

def test_session_cells_show_then_save_once(client: FlaskClient) -> None:
    created = client.post("/sessions", json={})
    assert created.status_code == 201, created.get_json()
    session_id = created.get_json()["session_id"]

    def cell(code: str) -> dict[str, Any]:
        response = client.post(f"/sessions/{session_id}/runcode", json={"code": code})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["status"] == "ok", (body.get("error"), body["stderr"][-2000:])
        return body

    try:
        first = cell(SALES + "plt.plot(df['month'], df['revenue'])\nplt.title('收入')")
        assert list(first["images"]) == ["figure_1.png"], "the figure left open, at the cell's end"
        # The notebook surprise: the figure was shown (and closed) in the cell before.
        second = cell("plt.savefig('revenue.png')\n" + COUNT_COLOURS.format(name="revenue.png"))
        assert list(second["images"]) == ["revenue.png"] and colours(second["output"]) > 10
        third = cell("fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])\nplt.show()\nfig.savefig('bars.png')")
        assert list(third["images"]) == ["bars.png"], "shown, then saved: once"
        fourth = cell("plt.plot([1, 2])\nplt.savefig('line.png')\nplt.show()\nplt.figure()")
        assert list(fourth["images"]) == ["line.png"], "saved, then shown: once; the blank figure: never"
        fifth = cell("plt.plot([2, 1])")
        assert list(fifth["images"]) == ["figure_2.png"], "numbers are not skipped by replaced captures"
    finally:
        client.delete(f"/sessions/{session_id}")

"""Libraries as LLMs remember them: idioms of pandas 1.x, numpy 1.x and older matplotlib styles still run.

Each program is the kind GPT-4 or Claude writes for a data question, sent as they send it.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient


def run(client: FlaskClient, code: str) -> dict[str, Any]:
    """POST /runcode; the answer's JSON (HTTP 200 asserted)."""
    response = client.post("/runcode", json={"code": code})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


SALES = (
    "import pandas as pd\nimport numpy as np\n"
    "df = pd.DataFrame({'month': pd.date_range('2024-01-01', periods=6, freq='MS'),\n"
    "                   'region': ['north', 'south'] * 3, 'revenue': [120.0, np.nan, 150.0, 90.0, np.nan, 110.0]})\n"
)


@pytest.mark.parametrize("name, code, expected", [
    ("DataFrame.append of a dict",
     SALES + "df = df.append({'month': pd.Timestamp('2024-07-01'), 'region': 'east', 'revenue': 99.0},"
             " ignore_index=True)\nprint(len(df), df.iloc[-1]['region'])", "7 east"),
    ("DataFrame.append of a frame",
     SALES + "both = df.append(df.head(2))\nprint(len(both))", "8"),
    ("Series.append",
     "import pandas as pd\ns = pd.Series([1, 2]).append(pd.Series([3]))\nprint(s.tolist())", "[1, 2, 3]"),
    ("fillna(method='ffill')",
     SALES + "print(df['revenue'].fillna(method='ffill').tolist())", "[120.0, 120.0, 150.0, 90.0, 90.0, 110.0]"),
    ("applymap",
     "import pandas as pd\nprint(pd.DataFrame({'a': [1.234, 5.678]}).applymap(lambda v: round(v, 1))['a'].tolist())",
     "[1.2, 5.7]"),
    ("resample('M')",
     "import pandas as pd\ns = pd.Series(range(60), index=pd.date_range('2024-01-01', periods=60, freq='D'))\n"
     "print(s.resample('M').sum().tolist())", "[465, 1305]"),
    ("freq='H'",
     "import pandas as pd\nprint(len(pd.date_range('2024-01-01', periods=24, freq='H')))", "24"),
    ("np.NaN and np.Inf",
     "import numpy as np\nprint(np.isnan(np.NaN), np.isinf(np.Inf), np.float_(1.5))", "True True 1.5"),
    ("plt.style.use('seaborn')",
     "import matplotlib.pyplot as plt\nplt.style.use('seaborn')\nplt.style.use('seaborn-whitegrid')\n"
     "plt.plot([1, 2])\nprint('styled')", "styled"),
    ("DataFrame.to_markdown",
     "import pandas as pd\nprint(pd.DataFrame({'city': ['Oslo'], 'people': [709]}).to_markdown(index=False))",
     "| city   |   people |"),
])
def test_idioms_llms_remember_still_run(client: FlaskClient, name: str, code: str, expected: str) -> None:
    body = run(client, code)
    assert body["status"] == "ok", (name, body.get("error"), body["stderr"][-2000:])
    assert expected in body["output"], (name, body["output"])


def test_the_image_has_the_versions_the_readme_names(client: FlaskClient) -> None:
    body = run(client, "import numpy, pandas, matplotlib, tabulate\n"
                       "print(numpy.__version__, pandas.__version__, matplotlib.__version__)")
    numpy_version, pandas_version, matplotlib_version = body["output"].split()
    assert numpy_version.startswith("1.26.") and pandas_version.startswith("2.2.")
    assert matplotlib_version.startswith(("3.9.", "3.10."))


def test_a_program_that_defines_its_own_append_keeps_it(client: FlaskClient) -> None:
    code = ("import pandas as pd\npd.DataFrame.append = lambda self, other: 'mine'\n"
            "print(pd.DataFrame().append(1))")
    assert run(client, code)["output"] == "mine\n"

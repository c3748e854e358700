"""One run cannot leave anything for the next: every program gets a fresh container."""

from __future__ import annotations

from flask.testing import FlaskClient

PLANT = (
    "import os, subprocess\n"
    "open('/workspace/planted.txt', 'w').write('secret of run 1')\n"
    "open('/tmp/planted.txt', 'w').write('secret of run 1')\n"
    "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
    "subprocess.Popen(['bash', '-c', 'while true; do echo spy >> /tmp/spy.log; sleep 0.1; done'],\n"
    "                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(os.uname().nodename, open('/proc/self/cgroup').read().strip().split('/')[-1][:12])\n"
)
LOOK = (
    "import os\n"
    "print([p for p in ('/workspace/planted.txt', '/tmp/planted.txt', '/tmp/spy.log') if os.path.exists(p)])\n"
    "cmds = []\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        cmds.append(open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode().strip())\n"
    "    except OSError:\n"
    "        pass\n"
    "print([c for c in cmds if 'sleep' in c or 'spy' in c])\n"
    "print(open('/proc/self/cgroup').read().strip().split('/')[-1][:12])\n"
)


def test_files_and_processes_of_one_run_are_invisible_to_the_next(client: FlaskClient) -> None:
    first = client.post("/runcode", json={"code": PLANT}).get_json()
    assert first["status"] == "ok", first
    first_container = (first["output"].split() + [""])[1]
    for _ in range(4):  # more runs than slots: every slot has been recycled at least once
        body = client.post("/runcode", json={"code": LOOK}).get_json()
        files, processes, container = body["output"].splitlines()
        assert files == "[]"
        assert processes == "[]"
        if first_container:  # gVisor shows no cgroup path; runc shows the container's id
            assert container != first_container, "a container never runs a second program"


def test_environment_holds_no_secret_of_the_center(make_app) -> None:
    client = make_app(auth_tokens=("tok-xyz-123",), database_url="sqlite:////tmp/pw-in-url-db.sqlite").test_client()
    code = (  # the program's environment, and the one a process it starts sees
        "import os, subprocess\n"
        "print(sorted(os.environ))\n"
        "env = subprocess.run(['cat', '/proc/self/environ'], capture_output=True, check=True).stdout\n"
        "print(b'PATH=' in env, env.count(b'tok-xyz'))\n"
    )
    body = client.post("/runcode", json={"code": code}, headers={"Authorization": "Bearer tok-xyz-123"}).get_json()
    names, seen_by_a_child = body["output"].splitlines()
    assert "tok-xyz" not in body["output"] and seen_by_a_child == "True 0"
    for forbidden in ("AGENT_PORT", "DATABASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "CIA_AUTH_TOKENS"):
        assert f"'{forbidden}'" not in names

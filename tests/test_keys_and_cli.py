"""Virtual keys, attribution by tenant, and the CLI commands over the ledger (run as real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text, ledger_rows
from thrifty.keys import create_key, revoke_key
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings

HI = [{"role": "user", "content": "hello there"}]


def thrifty(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THRIFTY_CONFIG": str(cwd / "thrifty.toml")}
    return subprocess.run(
        [sys.executable, "-m", "thrifty.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as upstream:
        yield upstream


def test_keys_attribute_tenants_and_revocation_takes_effect(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        engine = gw.runtime.ledger.engine
        record, secret = create_key(engine, "acme", "ci")
        gw.runtime.keys.refresh()
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="sk-wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                bad.chat.completions.create(model="fast", messages=HI)
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key=secret, max_retries=0) as good:
            good.chat.completions.create(model="fast", messages=HI)
            revoke_key(engine, record.key_id)
            gw.runtime.keys.refresh()
            with pytest.raises(openai.AuthenticationError, match="revoked"):
                good.chat.completions.create(model="fast", messages=HI)
        rows = ledger_rows(gw)
    ok = [r for r in rows if r["status"] == "ok"]
    assert [(r["tenant"], r["key_id"]) for r in ok] == [("acme", record.key_id)]
    assert len(rows) == 3 and sum(r["error_type"] == "authentication_error" for r in rows) == 2


def test_without_keys_only_loopback_is_served(tmp_path: Path, up: FakeUpstream) -> None:
    from thrifty.errors import PermissionDenied
    from thrifty.types import Caller

    (tmp_path / "thrifty.toml").write_text(config_text(up))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        keys = gw.runtime.keys
        assert keys.authenticate(Caller(loopback=True)).tenant == "default"
        with pytest.raises(PermissionDenied, match="loopback"):
            keys.authenticate(Caller(loopback=False))


def test_cli_config_check_keys_and_report(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up))
    checked = thrifty("config", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "ok (3 providers, 5 models)" in checked.stdout
    assert "my-private-finetune has no price" in checked.stdout

    created = thrifty("keys", "create", "--tenant", "acme", "--name", "ci", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split("secret:")[1].strip()
    key_id = created.stdout.split("key id:")[1].split()[0]
    assert secret.startswith("sk-thr-") and secret not in (tmp_path / "ledger.sqlite").read_bytes().decode("latin-1")

    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key=secret, max_retries=0) as client:
            for feature in ("a", "a", "b"):
                client.chat.completions.create(model="fast", messages=HI, extra_headers={"x-thrifty-feature": feature})
            client.chat.completions.create(model="mystery", messages=HI)
        ledger_rows(gw)

    report = thrifty("report", "--by", "feature", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = {r["group"]: r for r in json.loads(report.stdout)["rows"]}
    assert rows["a"]["requests"] == 2 and rows["a"]["cost_usd"] == "0.00054"
    assert rows[""]["unpriced_requests"] == 1
    text = thrifty("report", "--by", "model", cwd=tmp_path)
    assert "1 requests are unpriced" in text.stdout and "gpt-4o-mini" in text.stdout
    # A model with no price shows no cost at all, never $0.
    [mystery] = [line for line in text.stdout.splitlines() if line.startswith("my-private-finetune")]
    assert "unpriced" in mystery and "$0" not in mystery
    by_model = thrifty("report", "--by", "model", "--json", cwd=tmp_path)
    models = {r["group"]: r for r in json.loads(by_model.stdout)["rows"]}
    assert models["my-private-finetune"]["cost_usd"] is None and models["gpt-4o-mini"]["cost_usd"] == "0.00081"

    listed = thrifty("keys", "list", cwd=tmp_path)
    assert key_id in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    assert thrifty("keys", "revoke", key_id, cwd=tmp_path).returncode == 0
    assert "revoked" in thrifty("keys", "list", cwd=tmp_path).stdout
    again = thrifty("keys", "revoke", key_id, cwd=tmp_path)
    assert again.returncode == 1 and "no active key" in again.stderr


def test_config_check_refuses_unknown_keys_and_bad_targets(tmp_path: Path) -> None:
    (tmp_path / "thrifty.toml").write_text('[providers.up]\nkind = "openai"\ncolour = "blue"\n')
    result = thrifty("config", "check", cwd=tmp_path)
    assert result.returncode == 1 and "unknown key 'providers.up.colour'" in result.stderr
    (tmp_path / "thrifty.toml").write_text('[models.fast]\ntargets = ["nowhere::gpt-4o"]\n')
    result = thrifty("config", "check", cwd=tmp_path)
    assert result.returncode == 1 and "'nowhere', which is not configured" in result.stderr
    (tmp_path / "thrifty.toml").write_text('[providers.up]\nkind = "openai"\napi_key_env = "THRIFTY_TEST_NOT_SET"\n')
    result = thrifty("config", "check", cwd=tmp_path)
    assert result.returncode == 1 and "THRIFTY_TEST_NOT_SET" in result.stderr
    (tmp_path / "thrifty.toml").write_text("[providers.up\n")
    assert "not valid TOML" in thrifty("config", "check", cwd=tmp_path).stderr
    models = '[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    models += '[models.fast]\ntargets = ["up::gpt-4o-mini", "up::gpt-4o"]\n'
    (tmp_path / "thrifty.toml").write_text(models + 'router = "cascade"\n[models.fast.cascade]\nregex = "(["\n')
    result = thrifty("config", "check", cwd=tmp_path)  # it switched the check off at every request
    assert result.returncode == 1 and "does not compile" in result.stderr
    (tmp_path / "thrifty.toml").write_text(models + 'router = "learned"\nrouter_dir = "nope"\n')
    result = thrifty("config", "check", cwd=tmp_path)  # `serve` crashed with a traceback
    assert result.returncode == 1 and "models.fast:" in result.stderr and "router.json" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "thrifty.toml").write_text(models + "[cache.models.fsat]\nttl_s = 60\n")
    result = thrifty("config", "check", cwd=tmp_path)  # a typo's TTL or switch silently did nothing
    assert result.returncode == 1 and "cache.models.fsat: not an alias" in result.stderr


def test_simulate_and_export_round_trip(tmp_path: Path) -> None:
    (tmp_path / "thrifty.toml").write_text(
        '[providers.rec]\nkind = "replay"\n[models."gpt-4-1106-preview"]\ntargets = ["rec::gpt-4-1106-preview"]\n'
        "[ledger]\ncapture_payloads = true\n"
    )
    from thrifty.workload import demo_workload_path, read_workload, write_workload

    write_workload(tmp_path / "w.jsonl", read_workload(demo_workload_path())[:40])
    result = thrifty("simulate", "--workload", "w.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gpt-4-1106-preview" in result.stdout and "TOTAL" in result.stdout and "Quality" in result.stdout
    ledger = result.stdout.split("Ledger: sqlite:///")[1].strip()
    (tmp_path / "sim.toml").write_text(f'[ledger]\nurl = "sqlite:///{ledger}"\n')
    exported = thrifty("export", "--out", "out.jsonl", "--config", str(tmp_path / "sim.toml"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    records = read_workload(tmp_path / "out.jsonl")
    assert len(records) == 40
    assert all(r.answers["gpt-4-1106-preview"].text for r in records if r.source == "ledger")


def test_report_csv_by_feature_and_day(tmp_path: Path, up: FakeUpstream) -> None:
    import csv
    import io

    (tmp_path / "thrifty.toml").write_text(config_text(up) + "\n[cache]\nexact = true\n")
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            for feature in ("a", "a", "b"):
                client.chat.completions.create(
                    model="fast", messages=HI, temperature=0, extra_headers={"x-thrifty-feature": feature}
                )
        ledger_rows(gw)
    result = thrifty("report", "--by", "feature,day", "--csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0][0] == "feature,day"
    by_group = {row[0]: row for row in rows[1:] if not row[0].startswith("savings:")}
    day = next(iter(by_group)).split(" / ")[1]
    assert by_group[f"a / {day}"][1] == "2" and by_group[f"b / {day}"][1] == "1"
    savings = [row for row in rows if row[0] == "savings:cache"]
    assert savings and savings[0][-1] == "0.00054"  # two cache hits at $0.00027 each
    bad = thrifty("report", "--by", "colour", cwd=tmp_path)
    assert bad.returncode == 1 and "cannot group by colour" in bad.stderr


def test_lint_reports_cost_per_call_and_what_breaks_prefix_caching(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.json"
    repeated = "Always answer in British English and cite the policy section you used."
    system = f"Current time: 2026-11-26 15:04:05.\n\n{repeated}\n\nYou help customers.   {repeated}"
    tools = [{"type": "function", "function": {"name": n}} for n in ("search", "add")]
    prompt.write_text(json.dumps({"messages": [{"role": "system", "content": system}], "tools": tools}))
    result = thrifty("lint", str(prompt), "--model", "gpt-4o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "$2.50 per million tokens" in result.stdout
    assert "repeated-instruction" in result.stdout and "said 2 times verbatim" in result.stdout
    assert "timestamp at character 14" in result.stdout and "tools" not in result.stdout  # one order: stable
    assert "under the 1024 a provider caches" in result.stdout  # this short prompt is not cached anyway
    # Requests one a line (Anthropic bodies here): their tools compared, the top-level system read.
    requests = tmp_path / "requests.jsonl"
    body = {"system": "Be brief. session_id: 7f3c9a", "messages": [{"role": "user", "content": "hi"}]}
    lines = [{**body, "tools": tools}, {**body, "tools": tools[::-1]}]
    requests.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = thrifty("lint", str(requests), "--model", "gpt-4o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "system: session or user id at character 10" in result.stdout
    assert "tools of request 2: tools in a different order: ...search, add then add, search..." in result.stdout


@pytest.mark.parametrize(
    ("headers", "served"),
    [
        ({}, True),
        ({"origin": "http://127.0.0.1:8787"}, True),  # the dashboard's own page
        ({"x-forwarded-for": "203.0.113.7"}, False),  # a reverse proxy on this host speaks for someone else
        ({"forwarded": "for=203.0.113.7"}, False),
        ({"x-real-ip": "203.0.113.7"}, False),
        ({"via": "1.1 nginx"}, False),
        ({"origin": "https://attacker.example"}, False),  # a web page in a browser on this machine
        ({"origin": "null"}, False),
        ({"host": "rebound.attacker.example:8787"}, False),  # a DNS name rebound to 127.0.0.1
        ({"host": "127.0.0.1.rebind.attacker.example:8787"}, False),  # a name, whatever it starts with
        ({"origin": "http://127.0.0.1.attacker.example"}, False),
        ({"host": "localhost.:8787"}, True),
        ({"host": "[::1]"}, True),
        ({"host": "0.0.0.0:8787"}, True),  # `thrifty cache purge --gateway http://0.0.0.0:8787`
        ({"host": "127.1:8787"}, True),  # curl http://127.1:8787 (shorthand IPv4)
    ],
)
def test_keyless_mode_serves_programs_on_this_machine_only(
    tmp_path: Path, up: FakeUpstream, headers: dict[str, str], served: bool
) -> None:
    import httpx

    (tmp_path / "thrifty.toml").write_text(config_text(up))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        answer = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": "fast", "messages": HI},
            headers=headers,
        )
        purge = httpx.post(gw.base_url + "/admin/cache/purge", json={}, headers=headers)
    assert (answer.status_code == 200) is served, answer.text
    assert (purge.status_code == 200) is served, purge.text
    if not served:
        assert answer.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[models.r]\ntargets = ["up::gpt-4o-mini"]\nrouter = "rules"\ndefault = "up::gpt-4o"\n', "default"),
        (
            '[models.r]\ntargets = ["up::gpt-4o-mini"]\nrouter = "rules"\n[[models.r.rules]]\nuse = "nowhere::x"\n',
            "rules[0].use",
        ),
        ('[models.r]\ntargets = ["up::gpt-4o-mini"]\nrouter = "rules"\n[[models.r.rules]]\nuse = "typo"\n', "typo"),
        ('[models.r]\ntargets = ["up::gpt-4o-mini"]\nbaseline = "gpt4"\n', "baseline"),
    ],
)
def test_a_rule_may_only_choose_among_its_aliases_targets(tmp_path: Path, extra: str, message: str) -> None:
    """A rule naming a model outside the alias would be called without budgets or quotes knowing its price (or
    on a provider that does not exist): refused when the config is read."""
    (tmp_path / "thrifty.toml").write_text('[providers.up]\nkind = "openai"\n' + extra)
    result = thrifty("config", "check", cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_estimate_fails_a_ci_step_over_its_budget(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up))
    prompt = "Summarise the quarterly report in three bullet points."
    ok = thrifty(
        "estimate", "--model", "fast", "--prompt", prompt, "--max-tokens", "200", "--max-usd", "0.01", cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert "worst case for fast" in ok.stdout and "no --max-tokens" not in ok.stdout
    uncapped = thrifty("estimate", "--model", "fast", "--prompt", prompt, cwd=tmp_path)
    assert "no --max-tokens: the worst case assumes" in uncapped.stdout
    over = thrifty(
        "estimate", "--model", "fast", "--prompt", prompt, "--max-tokens", "200", "--max-usd", "0.0001", cwd=tmp_path
    )
    assert over.returncode == 1 and "over budget" in over.stderr and "--max-usd 0.0001" in over.stderr
    long = thrifty("estimate", "--model", "fast", "--prompt", prompt, "--max-input-tokens", "5", cwd=tmp_path)
    assert long.returncode == 1 and "input tokens is over --max-input-tokens 5" in long.stderr
    unknown = thrifty("estimate", "--model", "mystery", "--prompt", prompt, "--max-usd", "1", cwd=tmp_path)
    assert unknown.returncode == 1 and "unpriced" in unknown.stderr  # a price it cannot check is no pass
    bad = thrifty("estimate", "--model", "fast", "--prompt", prompt, "--max-usd", "-1", cwd=tmp_path)
    assert bad.returncode == 1 and "above 0" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("amount", "message"), [("-5", "above 0"), ("0", "above 0"), ("abc", "not an amount"), ("NaN", "above 0")]
)
def test_a_budget_set_from_the_cli_must_be_a_positive_amount(tmp_path: Path, amount: str, message: str) -> None:
    """A hard budget of $0 (or less) refuses every request of its scope; the config file already refuses it."""
    (tmp_path / "thrifty.toml").write_text('[ledger]\nurl = "sqlite:///ledger.sqlite"\n')
    result = thrifty("budget", "set", "--tenant", "acme", "--usd-per-month", amount, cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_lint_shows_no_cost_for_a_model_without_a_price(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Please  make sure to always answer in English.   " * 3)
    result = thrifty("lint", str(prompt), "--model", "mine::my-private-finetune", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no known price" in result.stdout and "$0.0000" not in result.stdout and "unpriced" in result.stdout


def test_metrics_need_an_admin_key_once_keys_exist(tmp_path: Path, up: FakeUpstream) -> None:
    """They show spend per tenant and feature: not for any tenant's key, nor for anyone who can reach the port."""
    import httpx

    from thrifty.keys import create_key

    (tmp_path / "thrifty.toml").write_text(config_text(up))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        tenant = create_key(gw.runtime.ledger.engine, "acme")[1]
        admin = create_key(gw.runtime.ledger.engine, "ops", admin=True)[1]
        gw.runtime.keys.refresh()
        url = gw.base_url + "/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": f"Bearer {tenant}"}).status_code == 403
        scraped = httpx.get(url, headers={"authorization": f"Bearer {admin}"})
    assert scraped.status_code == 200 and "thrifty_requests_total" in scraped.text
    public = config_text(up).replace("[server]\n", "[server]\npublic_metrics = true\n", 1)
    (tmp_path / "thrifty.toml").write_text(public)
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        create_key(gw.runtime.ledger.engine, "acme")
        gw.runtime.keys.refresh()
        assert httpx.get(gw.base_url + "/metrics").status_code == 200

"""``thrifty``: the command line, thin over the rest of the package."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

from thrifty.errors import BadRequest, ConfigError, ThriftyError

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command: Command | None = getattr(args, "run", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command(args)
    except ThriftyError as exc:
        print(f"thrifty: {exc.message}", file=sys.stderr)
        return 1


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from thrifty.settings import config_path, load_settings

    return load_settings(config_path(args.config))


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from thrifty.ledger.migrations import migrate
    from thrifty.ledger.writer import make_engine

    engine = make_engine(_settings(args).ledger_url())
    migrate(engine)
    return engine


def cmd_serve(args: argparse.Namespace) -> int:
    from thrifty.server.run import serve

    settings = _settings(args)
    host, port = args.host or settings.server.host, args.port or settings.server.port
    print(f"thrifty: serving on http://{host}:{port} (ledger {settings.ledger_url()})", file=sys.stderr)
    serve(settings, host, port)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from thrifty.assembly import _secret, build_pricer, build_router
    from thrifty.settings import config_path, load_settings
    from thrifty.tokens import TiktokenCounter

    path = config_path(args.file or args.config)
    settings = load_settings(path)
    for name, provider in settings.providers.items():
        _secret(name, provider)
    pricer = build_pricer(settings)
    aliases = {alias: settings.alias_targets(alias) for alias in settings.models}
    for alias, targets in aliases.items():
        for target in targets:
            if settings.providers[target.provider].kind != "replay" and not pricer.is_priced(target):
                print(f"warning: models.{alias}: {target} has no price; its calls will be recorded as unpriced")
    build_router(settings, aliases, TiktokenCounter())  # a learned router's folder must load, as `serve` will
    print(f"{path}: ok ({len(settings.providers)} providers, {len(settings.models)} models)")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from thrifty.keys import create_key

    record, secret = create_key(_engine(args), args.tenant, args.name or "", admin=args.admin)
    print(f"key id:  {record.key_id}\ntenant:  {record.tenant}\nsecret:  {secret}")
    print("The secret is shown only now; the gateway stores its hash.", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from thrifty.keys import revoke_key

    revoke_key(_engine(args), args.key_id)
    print(f"revoked {args.key_id}")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from thrifty.keys import list_keys
    from thrifty.render import table

    rows = [[k.key_id, k.tenant, k.name, "revoked" if k.revoked_at else "active"] for k in list_keys(_engine(args))]
    print(table(["key id", "tenant", "name", "state"], rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from thrifty.ledger import queries
    from thrifty.render import report_table, usd

    if args.cutoffs:
        return _report_cutoffs(args)
    engine = _engine(args)
    since = queries.since_timestamp(args.since)
    try:
        rows = queries.report(engine, args.by, since)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    savings = queries.savings_by_lever(engine, since)
    if args.csv:
        import csv

        writer = csv.writer(sys.stdout)
        fields = list(rows[0].as_json()) if rows else ["group"]
        writer.writerow([args.by if f == "group" else f for f in fields])
        for row in rows:
            writer.writerow(row.as_json().values())
        for lever, amount in sorted(savings.items()):
            writer.writerow([f"savings:{lever}", *([""] * (len(fields) - 2)), queries.plain(amount)])
        return 0
    if args.json:
        out = {
            "by": args.by,
            "rows": [r.as_json() for r in rows],
            "savings_usd": {k: queries.plain(v) for k, v in savings.items()},
        }
        print(json.dumps(out, indent=2))
        return 0
    print(report_table(args.by, rows))
    unpriced = sum(r.unpriced for r in rows)
    if unpriced:
        print(f"\n{unpriced} requests are unpriced: their cost is not in the totals above.")
    for lever, amount in sorted(savings.items()):
        print(f"saved by {lever}: {usd(amount)}")
    return 0


def _report_cutoffs(args: argparse.Namespace) -> int:
    from thrifty.ledger.cutoffs import CapRule, cutoff_report
    from thrifty.ledger.queries import since_timestamp
    from thrifty.render import cutoffs_output
    from thrifty.settings import OptimizeSettings

    optimize = _settings(args).optimize

    def rule(o: OptimizeSettings) -> CapRule:
        return CapRule(o.caps.default_max_tokens, o.caps.max_tokens) if o.caps else CapRule()

    features = {name: rule(f) for name, f in optimize.features.items()}
    models = {alias: rule(m) for alias, m in optimize.models.items()}
    rows = cutoff_report(_engine(args), since_timestamp(args.since), rule(optimize), features, models)
    print(cutoffs_output(rows, "json" if args.json else "csv" if args.csv else "table"), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from thrifty.demo import run_demo

    return run_demo(requests=args.requests, concurrency=args.concurrency, semantic=args.semantic)


def cmd_simulate(args: argparse.Namespace) -> int:
    from thrifty.demo import print_simulation
    from thrifty.simulate import simulate
    from thrifty.workload import read_workload

    records = read_workload(Path(args.workload))
    result = simulate(_settings(args), records[: args.requests or None], concurrency=args.concurrency)
    print_simulation(result)
    return 0


def cmd_cache_purge(args: argparse.Namespace) -> int:
    from thrifty.caches.purge import purge_from_cli

    settings = _settings(args)
    scope_args = {"tenant": args.tenant, "feature": args.feature, "model": args.model, "older_than": args.older_than}
    print(purge_from_cli(settings, scope_args, gateway_url=args.gateway, admin_key=args.key))
    return 0


def cmd_cache_verified(args: argparse.Namespace) -> int:
    from thrifty.caches.verified import verified_command

    print(verified_command(_engine(args), Path(args.out), args.since, args.feature))
    return 0


def cmd_cache_train(args: argparse.Namespace) -> int:
    from thrifty.caches.pair_training import TrainingOptions, train_command

    if args.finetune:
        from thrifty.caches import tuned_encoder

        if args.threads is not None and args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        tuning = tuned_encoder.TuningOptions(
            precision=args.precision,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            threads=args.threads,
            progress=print,
        )
        print(tuned_encoder.train_command(Path(args.pairs), Path(args.out), tuning))
        return 0
    options = TrainingOptions(precision=args.precision, hidden=args.hidden)
    print(train_command(_settings(args), Path(args.pairs), Path(args.out), options))
    return 0


def cmd_budget_set(args: argparse.Namespace) -> int:
    from thrifty.guards.budget_book import save_budget
    from thrifty.guards.budgets import Budget

    scopes = [(s, getattr(args, s)) for s in ("tenant", "key", "user", "feature", "session") if getattr(args, s)]
    periods = [(p, getattr(args, f"usd_per_{p}")) for p in ("day", "week", "month") if getattr(args, f"usd_per_{p}")]
    if args.usd_total:
        periods.append(("total", args.usd_total))
    if len(scopes) != 1 or len(periods) != 1:
        raise BadRequest("give exactly one of --tenant/--key/--user/--feature/--session and one --usd-per-PERIOD")
    (scope, scope_id), (period, usd) = scopes[0], periods[0]
    limit = _positive_usd(str(usd))  # 0 or less would refuse every request of a hard budget's scope
    budget = save_budget(_engine(args), Budget("", scope, scope_id, period, limit, not args.soft, args.clamp))
    kind = "soft" if args.soft else "hard"
    print(f"{budget.budget_id}: {kind} budget of ${budget.limit_usd} per {period} for {scope} {scope_id}")
    return 0


def cmd_budget_list(args: argparse.Namespace) -> int:
    from thrifty.guards.budget_book import from_settings, load_budgets
    from thrifty.render import table

    budgets = from_settings(_settings(args).budgets) + load_budgets(_engine(args))
    rows = [[b.budget_id, b.scope, b.scope_id, b.period, b.limit_usd, "hard" if b.hard else "soft"] for b in budgets]
    print(table(["budget", "scope", "id", "period", "limit", "kind"], rows))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """Exit 1 when the request breaks ``--max-usd`` or ``--max-input-tokens``: a CI step that fails the build."""
    from thrifty.quotes import Limits, estimate_from_cli

    limits = Limits(_positive_usd(args.max_usd) if args.max_usd is not None else None, args.max_input_tokens)
    try:
        text, breaches = estimate_from_cli(
            _settings(args), args.model, args.prompt, args.messages, args.max_tokens, args.json, limits
        )
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read the request: {exc}") from exc
    print(text)
    for breach in breaches:
        print(f"thrifty: over budget: {breach}", file=sys.stderr)
    return 1 if breaches else 0


def _positive_usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError as exc:
        raise BadRequest(f"{text!r} is not an amount in USD") from exc
    if not value.is_finite() or value <= 0:
        raise BadRequest(f"{text!r}: give an amount in USD above 0")
    return value


def cmd_lint(args: argparse.Namespace) -> int:
    from thrifty.assembly import build_pricer
    from thrifty.lint import lint_file
    from thrifty.pricing import CatalogPricer
    from thrifty.settings import config_path
    from thrifty.types import Target

    path = config_path(args.config)
    settings = _settings(args) if args.config or path.exists() else None
    pricer = build_pricer(settings) if settings is not None else CatalogPricer()
    target = Target.parse(args.model) if "::" in args.model else Target("openai", args.model)
    if args.schema:
        from thrifty.lint import lint_schema, structured_rule

        rule = structured_rule(settings, args.feature, args.read_fields, args.max_name_tokens)
        answers = Path(args.answers) if args.answers else None
        print(lint_schema(Path(args.schema), target, pricer, rule, answers))
        return 0
    if not args.prompt_file:
        raise BadRequest("give a PROMPT_FILE, or --schema SCHEMA.json")
    print(lint_file(Path(args.prompt_file), target, pricer))
    return 0


def _router_errors(run: Callable[[], str]) -> int:
    """A router command's output; a missing file or unusable data is a one-line error, not a traceback."""
    try:
        print(run())
    except (OSError, ValueError) as exc:
        raise BadRequest(str(exc)) from exc
    return 0


def cmd_router_train(args: argparse.Namespace) -> int:
    from thrifty.routers.learned import train_command

    return _router_errors(lambda: train_command(args.data, args.out, args.embedder))


def cmd_router_calibrate(args: argparse.Namespace) -> int:
    from thrifty.routers.calibrate import calibrate_command

    return _router_errors(lambda: calibrate_command(args.router, args.data, args.keep))


def cmd_eval_router(args: argparse.Namespace) -> int:
    from thrifty.routers.evaluate import eval_command

    return _router_errors(lambda: eval_command(args.data, args.router, args.decisions))


def cmd_eval_cache(args: argparse.Namespace) -> int:
    from thrifty.caches.evaluate_cli import eval_cache_command

    decisions = Path(args.decisions) if args.decisions else None
    print(eval_cache_command(_settings(args), Path(args.pairs), decisions, args.model or "", args.feature or ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from thrifty.export import export_workload

    count = export_workload(_engine(args), Path(args.out), args.since)
    print(f"wrote {count} records to {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty", description="An LLM gateway that cuts the bill.")
    sub = parser.add_subparsers(metavar="COMMAND")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", help="config file (default: $THRIFTY_CONFIG or ./thrifty.toml)")

    p = sub.add_parser("serve", parents=[config], help="run the HTTP gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("config", help="work with config files")
    csub = p.add_subparsers(metavar="ACTION")
    c = csub.add_parser("check", parents=[config], help="validate a config file without starting anything")
    c.add_argument("file", nargs="?")
    c.set_defaults(run=cmd_config_check)

    p = sub.add_parser("keys", help="issue and revoke virtual API keys")
    ksub = p.add_subparsers(metavar="ACTION")
    k = ksub.add_parser("create", parents=[config], help="issue a key (printed once)")
    k.add_argument("--tenant", required=True)
    k.add_argument("--name")
    k.add_argument("--admin", action="store_true", help="may use the admin endpoints")
    k.set_defaults(run=cmd_keys_create)
    k = ksub.add_parser("revoke", parents=[config], help="revoke a key by id")
    k.add_argument("key_id")
    k.set_defaults(run=cmd_keys_revoke)
    k = ksub.add_parser("list", parents=[config], help="list keys (never their secrets)")
    k.set_defaults(run=cmd_keys_list)

    p = sub.add_parser("cache", help="manage cached answers")
    cache_sub = p.add_subparsers(metavar="ACTION")
    c = cache_sub.add_parser("purge", parents=[config], help="purge cached answers (all, or those matching)")
    c.add_argument("--tenant")
    c.add_argument("--feature")
    c.add_argument("--model", help="model alias")
    c.add_argument("--older-than", help="age such as 30m, 12h, 7d")
    c.add_argument("--gateway", help="a running gateway's URL, to purge its in-process caches too")
    c.add_argument("--key", help="admin key for --gateway (default: $THRIFTY_ADMIN_KEY)")
    c.set_defaults(run=cmd_cache_purge)
    c = cache_sub.add_parser("verified", parents=[config], help="verified semantic hits, as labelled pairs")
    c.add_argument("--out", required=True, help="JSON lines, as thrifty eval cache and cache train read them")
    c.add_argument("--since", help="YYYY-MM-DD (UTC)")
    c.add_argument("--feature")
    c.set_defaults(run=cmd_cache_verified)
    c = cache_sub.add_parser("train", parents=[config], help="learn the semantic hit decision from labelled pairs")
    c.add_argument("--pairs", required=True, help='JSON lines: {"query", "cached", "label"} (as for eval cache)')
    c.add_argument("--out", required=True, help="model folder to write; point [cache] pair_model at it")
    c.add_argument("--precision", type=float, default=0.9, help="precision to calibrate the default threshold for")
    c.add_argument("--hidden", type=int, default=64, help="hidden units (0: logistic regression)")
    c.add_argument(
        "--finetune",
        action="store_true",
        help="fine-tune a copy of the MiniLM encoder on the pairs (minutes of CPU; needs the semantic extra)",
    )
    c.add_argument("--epochs", type=float, default=1.0, help="--finetune: passes over the pairs")
    c.add_argument("--learning-rate", type=float, default=3e-5, help="--finetune: AdamW's peak learning rate")
    c.add_argument("--threads", type=int, default=None, help="--finetune: torch threads (default: all cores)")
    c.set_defaults(run=cmd_cache_train)

    p = sub.add_parser("budget", help="spending limits per tenant, key, user, feature or session")
    bsub = p.add_subparsers(metavar="ACTION")
    b = bsub.add_parser("set", parents=[config], help="set (or replace) a budget")
    for scope in ("tenant", "key", "user", "feature", "session"):
        b.add_argument(f"--{scope}")
    for period in ("day", "week", "month"):
        b.add_argument(f"--usd-per-{period}", type=str)
    b.add_argument("--usd-total", type=str)
    b.add_argument("--soft", action="store_true", help="alert only, never refuse")
    b.add_argument("--clamp", action="store_true", help="lower max_tokens to what is left instead of refusing")
    b.set_defaults(run=cmd_budget_set)
    b = bsub.add_parser("list", parents=[config], help="budgets from the config and the database")
    b.set_defaults(run=cmd_budget_list)

    p = sub.add_parser("estimate", parents=[config], help="expected and worst-case cost of a request, per model")
    p.add_argument("--model", required=True, help="model alias")
    p.add_argument("--prompt", help="the user message")
    p.add_argument("--messages", help="a JSON file: a list of messages or a whole request body")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-usd", help="exit 1 if the worst case is over this (or unpriced): for CI")
    p.add_argument("--max-input-tokens", type=int, help="exit 1 if the prompt is over this many tokens: for CI")
    p.set_defaults(run=cmd_estimate)

    p = sub.add_parser("lint", parents=[config], help="what a prompt costs per call and what breaks prompt caching")
    p.add_argument("prompt_file", nargs="?")
    p.add_argument("--model", default="gpt-4o-mini", help="model (or provider::model) whose price and tokenizer apply")
    p.add_argument("--schema", help="a response JSON schema: output tokens spent on unread fields and long names")
    p.add_argument("--read-fields", help="the fields the client reads, comma-separated dotted paths (items.price)")
    p.add_argument("--max-name-tokens", type=int, help="property names longer than this are long (default 3)")
    p.add_argument("--answers", help="sample answers (JSON or JSON lines) to measure instead of estimating")
    p.add_argument("--feature", help="use this feature's [optimize.features.NAME.structured] from the config")
    p.set_defaults(run=cmd_lint)

    p = sub.add_parser("router", help="train and calibrate a learned router on outcome data")
    rsub = p.add_subparsers(metavar="ACTION")
    r = rsub.add_parser("train", help="train on OUTCOMES.jsonl (one {prompt, outcomes} object a line)")
    r.add_argument("--data", required=True, action="append", help="outcome file (repeatable)")
    r.add_argument("--out", required=True, help="router folder to write")
    r.add_argument(
        "--embedder",
        choices=["minilm"],
        help="add MiniLM sentence embeddings to the features (~28 ms per decision; needs the semantic extra)",
    )
    r.set_defaults(run=cmd_router_train)
    r = rsub.add_parser("calibrate", help="the cheapest operating point that keeps a share of the best quality")
    r.add_argument("--router", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--keep", type=float, default=0.95)
    r.set_defaults(run=cmd_router_calibrate)

    p = sub.add_parser("eval", help="evaluate a router or the cache decision on your own data")
    esub = p.add_subparsers(metavar="WHAT")
    e = esub.add_parser("router", help="cost-quality curve, CPT and APGR beside random, best single and oracle")
    e.add_argument("--data", required=True)
    e.add_argument("--router", required=True)
    e.add_argument("--decisions", help="write one {prompt, model} line per prompt at the calibrated point")
    e.set_defaults(run=cmd_eval_router)
    e = esub.add_parser("cache", parents=[config], help="the configured semantic cache decision on labelled pairs")
    e.add_argument("--pairs", required=True, help='JSON lines: {"query", "cached", "label"} (+ contexts)')
    e.add_argument("--decisions", help="write each pair back with its hit and score")
    e.add_argument("--model", help="decide as for requests to this alias (its [cache.models.ALIAS] rule)")
    e.add_argument("--feature", help="decide as for this feature (its [cache.features.NAME] rule)")
    e.set_defaults(run=cmd_eval_cache)

    p = sub.add_parser("report", parents=[config], help="requests, tokens and spend from the ledger")
    p.add_argument(
        "--by",
        default="model",
        help="tenant, key, user, feature, session, model, provider, alias, day; several with commas (feature,day)",
    )
    p.add_argument("--since", help="YYYY-MM-DD (UTC)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--csv", action="store_true")
    p.add_argument(
        "--cutoffs", action="store_true", help="answers cut off by max_tokens, per feature and model, and caps to try"
    )
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("demo", help="replay the bundled workload through a real gateway")
    p.add_argument("--requests", type=int, default=0, help="only the first N records (default: all)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--semantic", action="store_true", help="also the semantic cache (MiniLM on the CPU; ~4x slower)")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("simulate", parents=[config], help="replay a workload file against a config")
    p.add_argument("--workload", required=True)
    p.add_argument("--requests", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser("export", parents=[config], help="write captured ledger traffic as a workload file")
    p.add_argument("--out", required=True)
    p.add_argument("--since", help="YYYY-MM-DD (UTC)")
    p.set_defaults(run=cmd_export)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())

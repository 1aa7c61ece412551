"""The ``nkb`` command line: a thin client of the library.

Each command parses its options, makes one library call and formats the result. Every
failure the user can cause is an ``NkbError``; the group turns it into one line on stderr,
``Error: <message> (<hint>)``, and exit status 1 (``--debug`` shows the traceback instead).
Click's own usage errors keep their exit status 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import pandas as pd

from kb import __version__, config, output, queries
from kb.card import Card, neuron_card
from kb.cypher import DEFAULT_TIMEOUT_S
from kb.errors import NkbError
from kb.ids import NeuronId
from kb.records import decode_activations
from kb.stores import init_store, open_store


class NkbGroup(click.Group):
    """Reports NkbError as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NkbError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            # Engine messages can run over several lines (a caret under the query text);
            # the first line says what failed, --debug shows the rest.
            message = e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
            raise click.ClickException(f"{message} ({e.hint})" if e.hint else message) from e


def store_option(f):
    return click.option(
        "--store", "store_url", metavar="PATH|URL", envvar=config.STORE_ENV, show_envvar=True,
        help="Knowledge base: a directory (embedded engine) or a bolt:// / neo4j:// server URL. "
             "Default: $NKB_STORE, the config file, else ~/.local/share/neuron-kb/default.",
    )(f)


def format_option(choices: tuple[str, ...] = output.FORMATS):
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default="table", show_default=True,
        help="Output format: an aligned table, CSV, or JSON (a list of objects).",
    )


def _url(store_url: str | None) -> str:
    return store_url or config.default_store()


def _echo_rows(df: pd.DataFrame, fmt: str) -> None:
    click.echo(output.render(df, fmt))


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        if key in params:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--param")
        params[key] = value
    return params


@click.group(cls=NkbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="nkb")
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """neuron-kb: a knowledge base of language-model neurons.

    Ask which neurons fire on a token, what they promote, what explains them and which
    neurons elsewhere do the same. Start with `nkb init`, fill it with `nkb ingest`, then
    `nkb queries` lists the questions `nkb query --name` answers.
    """
    ctx.ensure_object(dict)["debug"] = debug


@cli.command()
@store_option
def init(store_url: str | None) -> None:
    """Create an empty knowledge base (nothing happens if one is already there)."""
    url = _url(store_url)
    if init_store(url):
        click.echo(f"Created an empty knowledge base at {config.redact(url)}")
    else:
        click.echo(f"A knowledge base already exists at {config.redact(url)}")


@cli.command()
@click.argument("cypher", required=False)
@click.option("--name", "-n", "name", metavar="NAME", help="Run the named query NAME instead (see `nkb queries`).")
@click.option("--param", "-p", "param_values", multiple=True, metavar="KEY=VALUE",
              help="A query parameter; repeat for more. Named queries convert values to the "
                   "parameter's type; for Cypher text a value is read as JSON when it parses "
                   "(42, 1.5, true, null, \"text\", [1, 2]), else as text.")
@click.option("--write", is_flag=True, help="Allow the Cypher text to change the store (read-only without it).")
@click.option("--timeout", type=click.FloatRange(min=0, max=10**8), default=DEFAULT_TIMEOUT_S, show_default=True,
              metavar="SECONDS", help="Cancel the query after this many seconds (0: no limit).")
@store_option
@format_option()
def query(cypher: str | None, name: str | None, param_values: tuple[str, ...], write: bool, timeout: float,
          store_url: str | None, fmt: str) -> None:
    """Run Cypher text, or a named query, and print the rows.

    \b
    Examples:
      nkb query "MATCH (n:Neuron) WHERE n.layer = \\$layer RETURN n.id LIMIT 5" -p layer=3
      nkb query --name promotes_token -p token=" dog" -p limit=5 --format csv
    """
    if bool(cypher) == bool(name):
        raise click.UsageError("give either CYPHER text or --name NAME (one of them)")
    if name and write:
        raise click.UsageError("--write applies to Cypher text; named queries only read")
    params = _parse_params(param_values)
    if name:
        with open_store(_url(store_url), read_only=True) as store:
            df = queries.run(store, name, params, timeout=timeout)
    else:
        typed = {k: queries.parse_value(v) for k, v in params.items()}
        with open_store(_url(store_url), read_only=not write) as store:
            df = store.cypher(cypher, typed, write=write, timeout=timeout)
    _echo_rows(df, fmt)


@cli.command(name="queries")
@click.argument("name", required=False)
@format_option()
def list_queries(name: str | None, fmt: str) -> None:
    """List the named queries, or show one query's parameters and Cypher text."""
    if name is None:
        df = pd.DataFrame(
            [(q.name, q.description, q.signature()) for q in queries.all_queries()],
            columns=["name", "description", "parameters"],
        )
        _echo_rows(df, fmt)
        return
    q = queries.get(name)
    df = pd.DataFrame(
        [(p, "required" if d is queries.REQUIRED else json.dumps(d), q.param_types.get(p), q.param_docs.get(p, ""))
         for p, d in q.params.items()],
        columns=["parameter", "default", "type", "description"],
    )
    if fmt != "table":
        _echo_rows(df, fmt)
        return
    click.echo(f"{q.name}: {q.description}\n")
    if len(df):
        click.echo(output.to_table(df, max_cell=100) + "\n")
    click.echo(q.text.rstrip())


@cli.command()
@store_option
@format_option()
def stats(store_url: str | None, fmt: str) -> None:
    """Count nodes per label and relationships per type, and neurons per model."""
    with open_store(_url(store_url), read_only=True) as store:
        _echo_rows(queries.store_stats(store), fmt)


@cli.command()
@click.argument("neuron", metavar="MODEL/LAYER/INDEX")
@click.option("--tokens", default=10, show_default=True, help="Tokens per list (promoted, suppressed, read).")
@click.option("--records", default=5, show_default=True, help="Activation records to print.")
@click.option("--kind", "record_kind", default="top", show_default=True,
              help="Which records: top, random or quantile_<k>.")
@store_option
@format_option(("table", "json"))
def show(neuron: str, tokens: int, records: int, record_kind: str, store_url: str | None, fmt: str) -> None:
    """Print one neuron's card: statistics, tokens, top activation records, explanations.

    In the records, the tokens where the neuron fires (at least half the record's maximum)
    are highlighted on a terminal and marked [[like this]] otherwise.
    """
    nid = str(NeuronId.parse(neuron))
    with open_store(_url(store_url), read_only=True) as store:
        card = neuron_card(store, nid, tokens=tokens, records=records, record_kind=record_kind)
    if fmt == "json":
        click.echo(output.to_json(card.to_dict()))
        return
    click.echo(card_text(card, color=sys.stdout.isatty()))


def _fmt(value: Any, spec: str = ".4g") -> str:
    value = output.plain(value)
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _token_list(rows: list[dict[str, Any]], value_col: str) -> str:
    if not rows:
        return "-"
    return ", ".join(f"{json.dumps(r['token'], ensure_ascii=False)} {_fmt(r[value_col])}" for r in rows)


def mark_firing(tokens: list[str], activations: str | None, color: bool) -> str:
    """The snippet text with the tokens at or above half the record's maximum marked."""
    acts = decode_activations(activations).tolist() if activations else []
    top = max(acts, default=0.0)
    out = []
    for i, tok in enumerate(tokens or []):
        act = acts[i] if i < len(acts) else 0.0
        if top > 0 and act >= top / 2:
            core = tok.lstrip(" ")
            lead = tok[: len(tok) - len(core)]
            out.append(lead + (click.style(core or tok, fg="yellow", bold=True) if color else f"[[{core or tok}]]"))
        else:
            out.append(tok)
    return "".join(out).replace("\n", "\\n")


def card_text(card: Card, *, color: bool = False) -> str:
    """The card as terminal text (bold title and highlighted firing tokens when ``color``)."""
    n = card.neuron
    title = f"{n['neuron']}  ({n.get('kind') or ''} neuron {n['idx']} of layer {n['layer']} in {n['model']})".replace("( ", "(")
    lines = [click.style(title, bold=True) if color else title]
    lines.append(f"  activation  max {_fmt(n['max_act'])}  min {_fmt(n['min_act'])}  mean {_fmt(n['mean_act'])}  "
                 f"var {_fmt(n['var_act'])}  density {_fmt(n['density'])} over {_fmt(n['n_tokens'])} tokens")
    lines.append(f"  N2G         precision {_fmt(n['n2g_precision'])}  recall {_fmt(n['n2g_recall'])}  "
                 f"F1 {_fmt(n['n2g_f1'])}")
    if n.get("explanation"):
        lines.append(f"  explanation {json.dumps(n['explanation'], ensure_ascii=False)} "
                     f"(score {_fmt(n['explanation_score'])})")
    lines.append("")
    lines.append(f"Promotes:   {_token_list(card.promotes, 'logit')}")
    lines.append(f"Suppresses: {_token_list(card.suppresses, 'logit')}")
    if not card.reads:
        lines.append("Reads:      -")
    for via in sorted({r["via"] for r in card.reads}):
        lines.append(f"Reads ({via}): {_token_list([r for r in card.reads if r['via'] == via], 'weight')}")
    lines.append("")
    lines.append(f"Activation records ({card.record_kind}):")
    if not card.records:
        lines.append("  -")
    for r in card.records:
        lines.append(f"  {r['rank']:>3}  max {_fmt(r['max_act']):>7}  {mark_firing(r['tokens'], r['activations'], color)}")
    lines.append("")
    lines.append("Explanations:")
    if not card.explanations:
        lines.append("  -")
    for explanation in sorted({e["explanation"] for e in card.explanations}):
        e = [row for row in card.explanations if row["explanation"] == explanation]
        first = e[0]
        lines.append(f"  {first['explainer']}/{first['method']}: {json.dumps(first['text'], ensure_ascii=False)}")
        scores = [f"{s['score_method']}/{s['split']} {_fmt(s['score'])}" for s in e if s["score_method"] is not None]
        if scores:
            lines.append(f"      {'   '.join(scores)}")
    return "\n".join(lines)


@cli.command(name="delete-model")
@click.argument("model")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@store_option
def delete_model(model: str, yes: bool, store_url: str | None) -> None:
    """Delete a model, its neurons and everything attached only to them.

    Tokens and snippets that another model still uses are kept.
    """
    url = _url(store_url)
    with open_store(url, read_only=False) as store:
        known = queries.model_ids(store)
        if model not in known:
            raise NkbError(f"no model {model!r} in {config.redact(url)}",
                           f"models in this store: {', '.join(known) or 'none'}")
        if not yes:
            click.confirm(f"Delete model {model} and everything only it uses from {config.redact(url)}?", abort=True)
        deleted = store.delete_model(model)
    summary = ", ".join(f"{v} {k}" for k, v in deleted.items() if v) or "nothing"
    click.echo(f"Deleted model {model}: {summary}")


@cli.command(name="export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["parquet", "neo4j-admin"]), default="parquet", show_default=True,
              help="parquet: loads into any store with `nkb import-kb`; neo4j-admin: CSV files for "
                   "`neo4j-admin database import full`.")
@store_option
def export(directory: str, fmt: str, store_url: str | None) -> None:
    """Write the whole knowledge base to DIRECTORY (new or empty), one file per label and type."""
    from kb.export import export_kb

    with open_store(_url(store_url), read_only=True) as store, _FileBars() as bars:
        report = export_kb(store, directory, fmt, progress=bars)
    total = sum(report.rows.values())
    click.echo(f"Exported {total:,d} rows in {len(report.rows)} files to {report.path} ({fmt})")
    if fmt == "neo4j-admin":
        click.echo(f"Load it into Neo4j with: {report.path}/import.sh (see docker/neo4j-admin-import.sh)")


@cli.command(name="import-kb")
@click.argument("directory", type=click.Path(file_okay=False))
@store_option
def import_kb(directory: str, store_url: str | None) -> None:
    """Load a Parquet export (from `nkb export DIR`) into a store; importing twice changes nothing."""
    from kb.export import check_export, import_kb as load

    check_export(directory)  # refuse anything that is not a whole export before a store is created
    with open_store(_url(store_url), create=True) as store, _FileBars() as bars:
        rows = load(store, directory, progress=bars)
    click.echo(f"Imported {sum(rows.values()):,d} rows from {directory} into {config.redact(store.url)}")


class _FileBars:
    """One progress bar per file for export and import (off when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.bars = _Bars()
        self.name: str | None = None

    def __call__(self, name: str, n: int) -> None:
        if name != self.name:
            self.bars.end()
            self.bars.begin(name, None, "row")
            self.name = name
        self.bars.advance(n)

    def __enter__(self) -> "_FileBars":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.end()


# -- nkb ingest -----------------------------------------------------------------------------
# ingest.pipeline imports the model stack (torch) only inside the stages, so a query-only
# install still runs every other command.

class _Bars:
    """Progress bars on stderr for the pipeline's Reporter; tqdm turns them off when stderr
    is not a terminal (disable=None)."""

    def __init__(self) -> None:
        self.bar = None

    def begin(self, stage: str, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=stage, unit=unit, unit_scale=True, disable=None, file=sys.stderr,
                        dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def note(self, message: str) -> None:
        if sys.stderr.isatty():
            click.echo(message, err=True)


def _setting_options(f):
    """One click option per ingest setting, built from the settings' own definitions (ingest.stages)."""
    from ingest.stages import all_settings

    for s in reversed(all_settings()):
        kind = click.Choice(s.choices) if s.choices else s.type
        f = click.option(s.flag, s.name, type=kind, default=s.default, show_default=s.default is not None,
                         help=s.help)(f)
    return f


def _stages_help() -> str:
    from ingest.stages import REGISTRY

    return "Comma-separated stages to run, or all (the default ones). Stages: " + "; ".join(
        f"{name}: {stage.help}{'' if stage.default else ' (not in all)'}" for name, stage in REGISTRY.items())


@cli.command()
@click.argument("model", default="smollm2-135m")
@click.option("--name", help="Model id in the store (default: the bundled name, HF id or directory name).")
@click.option("--layers", metavar="LIST", help="Layers to ingest, e.g. 0-5,12 (default: all).")
@click.option("--stages", metavar="LIST", default="all", show_default=True, help=_stages_help())
@_setting_options
@store_option
def ingest(model: str, store_url: str | None, layers: str | None, stages: str, name: str | None,
           **settings: Any) -> None:
    """Compute and store what every neuron of MODEL responds to and what it writes.

    MODEL is a bundled name (smollm2-135m), a Hugging Face id, a local directory or a .gguf
    file. A killed run resumes where it stopped; running a finished ingest again changes
    nothing.
    """
    from ingest.pipeline import IngestConfig, Pipeline, parse_layers

    cfg = IngestConfig(model, name=name, layers=parse_layers(layers),
                       stages=[s.strip() for s in stages.split(",")], **settings)
    url = _url(store_url)
    pipeline = Pipeline(cfg, _Bars()).prepare(url)  # validates everything before the store is touched
    with open_store(url, create=True) as store:
        report = pipeline.run(store)
    for stage in report.stages:
        skipped = f", {len(stage.layers_skipped)} already done" if stage.layers_skipped else ""
        click.echo(f"{stage.stage:12s} {len(stage.layers_done):3d} layers{skipped}  {stage.rows:>10,d} rows  "
                   f"{stage.seconds:7.1f} s")
    click.echo(f"Ingested {report.model} into {report.store} in {report.seconds:.0f} s")


def main() -> None:
    cli(prog_name="nkb")


if __name__ == "__main__":
    main()

"""The ``nkb`` command line: a thin client of the library.

Each command parses its options, makes one library call and formats the result. Every
failure the user can cause is an ``NkbError``; the group turns it into one line on stderr,
``Error: <message> (<hint>)``, and exit status 1 (``--debug`` shows the traceback instead).
Click's own usage errors keep their exit status 2.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from click.core import ParameterSource
import pandas as pd

from ingest.pipeline import Reporter
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
    # An empty --store is a mistake, not a request for the default store.
    if store_url is None:
        return config.default_store()
    source = click.get_current_context().get_parameter_source("store_url")
    return config.check_location(store_url, f"${config.STORE_ENV}" if source is ParameterSource.ENVIRONMENT else "--store")


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


def card_text(card: Card, *, color: bool = False, n2g_limit: int = 15) -> str:
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
    lines.append(f"N2G graph ({len(card.n2g)} patterns; context, then the [firing token]; * is any token):")
    if not card.n2g:
        lines.append("  -")
    for p in card.n2g[:n2g_limit]:
        shown = ["*" if t == "*" else json.dumps(t, ensure_ascii=False) for t in p["tokens"]]
        shown[-1] = f"[{shown[-1]}]"
        lines.append(f"  {_fmt(p['activation'], '.2f'):>5}  {' '.join(shown)}")
    if len(card.n2g) > n2g_limit:
        lines.append(f"  ... {len(card.n2g) - n2g_limit} more")
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


@cli.command()
@click.argument("neuron", metavar="MODEL/LAYER/INDEX")
@click.argument("text")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@store_option
@format_option()
def predict(neuron: str, text: str, device: str, store_url: str | None, fmt: str) -> None:
    """A neuron's N2G prediction on TEXT next to its real activation, token by token.

    Both are normalised by the neuron's largest activation on the corpus; a token fires at
    0.5. The real activation comes from running the model (it loads, which takes a while).
    """
    try:
        from ingest.n2g.prediction import predict_text
    except ImportError as e:
        raise NkbError(f"predicting needs the model stack, which is not installed ({e.name} is missing)",
                       "pip install 'neuron-kb[ingest]'") from None
    nid = str(NeuronId.parse(neuron))
    with open_store(_url(store_url), read_only=True) as store:
        df = predict_text(store, nid, text, device=device)
    _echo_rows(df, fmt)


@cli.command()
@click.argument("neuron", metavar="MODEL/LAYER/INDEX")
@click.option("--out", "out", required=True, metavar="FILE.svg|FILE.png", help="Where to write the picture.")
@store_option
def render(neuron: str, out: str, store_url: str | None) -> None:
    """Draw a neuron's N2G graph (needs Graphviz's dot): firing tokens on the right, coloured
    by activation, the context walking back to the left, coloured by importance; * is any token."""
    from kb import n2g

    nid = str(NeuronId.parse(neuron))
    with open_store(_url(store_url), read_only=True) as store:
        graph = n2g.load_graph(store, nid)
    click.echo(f"Wrote {n2g.render(graph, out)}")


@cli.command(name="delete-model")
@click.argument("model")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@store_option
def delete_model(model: str, yes: bool, store_url: str | None) -> None:
    """Delete a model, its neurons and everything attached only to them.

    Tokens and snippets that another model still uses are kept. On the embedded engine the
    delete is one transaction, with a buffer pool of up to 4 GiB unless one is configured.
    """
    url = _url(store_url)
    with open_store(url, read_only=False, buffer_pool=config.buffer_pool_bytes(config.DELETE_BUFFER_POOL_MB)) as store:
        known = queries.model_ids(store)
        if model not in known:
            raise NkbError(f"no model {model!r} in {config.redact(url)}",
                           f"models in this store: {', '.join(known) or 'none'}")
        if not yes:
            click.confirm(f"Delete model {model} and everything only it uses from {config.redact(url)}?", abort=True)
        deleted = store.delete_model(model)
    summary = ", ".join(f"{v} {k}" for k, v in deleted.items() if v) or "nothing"
    click.echo(f"Deleted model {model}: {summary}")


# -- vectors: search, similar, fires, match, index -------------------------------------------

@cli.command()
@click.argument("text", required=False)
@click.option("--model", help="Only this model.")
@click.option("--layers", metavar="LIST", help="Only these layers, e.g. 3-7 or 1,4.")
@click.option("--min-score", type=float, help="Only neurons whose explanation is at least this similar (cosine).")
@click.option("--promotes", "promotes", metavar="TOKEN", help="Instead: the neurons that most promote TOKEN (exact text, leading space included).")
@click.option("--suppresses", "suppresses", metavar="TOKEN", help="Instead: the neurons that most suppress TOKEN.")
@click.option("--reads", "reads", metavar="TOKEN", help="Instead: the neurons whose input weights read TOKEN most.")
@click.option("--fires-on", "fires_on", metavar="TOKEN",
              help='Instead: neurons whose Neuron-to-Graph graph fires on TOKEN, exactly as its text is stored (" all").')
@click.option("--after", metavar="TOKEN", help="With --fires-on: only where the token right before it in the graph is TOKEN.")
@click.option("--k", "--limit", "k", type=int, default=20, show_default=True, help="Neurons to return.")
@store_option
@format_option()
def search(text: str | None, model: str | None, layers: str | None, min_score: float | None, promotes: str | None,
           suppresses: str | None, reads: str | None, fires_on: str | None, after: str | None, k: int,
           store_url: str | None, fmt: str) -> None:
    """Find neurons: by the meaning of their explanations, by a token they promote, suppress or
    read, or by the tokens their N2G graph fires on.

    \b
    Examples:
      nkb search "dogs and other pets" --layers 20-29
      nkb search --promotes " dog" --k 10
      nkb search --fires-on " all" --after " not" --layers 0-9
    """
    from kb import vectors

    by_token = {name: value for name, value in (("promotes", promotes), ("suppresses", suppresses), ("reads", reads))
                if value is not None}
    if len(by_token) + (text is not None) + (fires_on is not None) != 1:
        raise click.UsageError("give TEXT, or one of --promotes / --suppresses / --reads / --fires-on TOKEN")
    if after is not None and fires_on is None:
        raise click.UsageError("--after goes with --fires-on")
    with open_store(_url(store_url), read_only=True) as store:
        if fires_on is not None:
            from ingest.pipeline import parse_layers  # light: no model stack
            from kb import n2g

            if min_score is not None:
                raise click.UsageError("--min-score applies to text search")
            df = n2g.search(store, fires_on, after=after, model=model, layers=parse_layers(layers), limit=k)
        elif by_token:
            (relation, token), = by_token.items()
            if layers is not None or min_score is not None:
                raise click.UsageError("--layers and --min-score apply to text search")
            df = vectors.token_neurons(store, token, relation, model=model, k=k)
        else:
            df = vectors.search(store, text, model=model, layers=layers, min_score=min_score, k=k)
        if df.empty and text is None:
            _check_token_texts(store, [t for t in (fires_on, after, *by_token.values()) if t is not None])
    _echo_rows(df, fmt)


def _check_token_texts(store, texts: list[str]) -> None:
    """Refuse a token text that is no token's text: a search by it can only come back empty."""
    known = set(store.cypher("MATCH (t:TokenText) WHERE t.id IN $texts RETURN t.id AS id", {"texts": texts})["id"])
    unknown = [t for t in texts if t not in known]
    if unknown:
        raise NkbError(f"no token's text is '{unknown[0]}'",
                       "a token's text keeps its leading space, as in ' dog', and a token that holds part of a "
                       "character is spelled by its bytes, as in '\\xf0\\x9f'")


def _method_option(default: str):
    from kb.vectors.files import KIND_HELP, KINDS

    return click.option("--method", type=click.Choice(KINDS), default=default, show_default=True,
                        help="Similarity: " + "; ".join(f"{k}: {v}" for k, v in KIND_HELP.items()) + ".")


@cli.command()
@click.argument("neuron", metavar="MODEL/LAYER/INDEX")
@_method_option("weights_out")
@click.option("--layers", default="other", show_default=True, metavar="other|all|A-B",
              help="Where to look: every layer but the neuron's own, all layers, or a range/list.")
@click.option("--k", "k", type=int, default=10, show_default=True, help="Neurons to return.")
@click.option("--to", "to_model", metavar="MODEL2", help="Look in another model of the same shape.")
@store_option
@format_option()
def similar(neuron: str, method: str, layers: str, k: int, to_model: str | None, store_url: str | None, fmt: str) -> None:
    """The neurons most similar to NEURON (cosine of their vectors under --method)."""
    from kb import vectors

    with open_store(_url(store_url), read_only=True) as store:
        df = vectors.similar(store, neuron, method=method, layers=layers, k=k, to_model=to_model)
    _echo_rows(df, fmt)


@cli.command()
@click.argument("text")
@click.option("--model", help="Which model to run (needed when the store holds several).")
@click.option("--k", "k", type=int, default=20, show_default=True, help="Neurons to return.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@store_option
@format_option()
def fires(text: str, model: str | None, k: int, device: str, store_url: str | None, fmt: str) -> None:
    """Run the model on TEXT and list the neurons that fire most relative to their own maximum."""
    try:
        from ingest.fires import fires as run_fires
        from ingest.models import resolve_device
    except ImportError as e:
        raise NkbError(f"running the model needs the model stack ({e.name} is missing)",
                       "pip install 'neuron-kb[ingest]'") from None
    with open_store(_url(store_url), read_only=True) as store:
        df = run_fires(store, text, model=model, k=k, device=resolve_device(device))
    _echo_rows(df, fmt)


@cli.command()
@click.argument("model")
@click.option("--layers", metavar="A,B", help="Match layer A to layer B (with --to: these layers of both models).")
@click.option("--adjacent", is_flag=True, help="Match every layer to the next.")
@click.option("--to", "to_model", metavar="MODEL2", help="Match to the same layers of another model of the same shape.")
@_method_option("weights_out")
@click.option("--solver", type=click.Choice(("auto", "dense", "sparse")), default="auto", show_default=True,
              help="dense: full Hungarian; sparse: over each neuron's nearest candidates (large layers); auto: by size.")
@click.option("--candidates", "k", type=int, default=32, show_default=True, help="Candidates per neuron for the sparse solver.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), help="Write a PNG of mean matched similarity against layer distance.")
@click.option("--dry-run", is_flag=True, help="Compute and print, but store no MATCHES edges.")
@store_option
@format_option()
def match(model: str, layers: str | None, adjacent: bool, to_model: str | None, method: str, solver: str, k: int,
          plot: str | None, dry_run: bool, store_url: str | None, fmt: str) -> None:
    """Hungarian matching of neurons between layers of MODEL, or with the same layers of MODEL2.

    Stores MATCHES edges (unless --dry-run) and prints one row per matched pair of layers:
    mean matched similarity, and the share of pairs whose top promoted token is the same.
    Follow chains of matches with `nkb query --name match_chain`.
    """
    from kb.match import match as run_match, plot_by_distance

    if plot and not plot.lower().endswith(".png"):
        raise click.BadParameter("the plot is a PNG: give a path ending in .png", param_hint="--plot")
    with open_store(_url(store_url), read_only=dry_run) as store:
        result = run_match(store, model, layers=layers, adjacent=adjacent, to_model=to_model, method=method,
                           solver=solver, k=k, write=not dry_run)
    if plot:
        plot_by_distance(result.summary, plot, title=f"{model}{' vs ' + to_model if to_model else ''}: {method}")
    _echo_rows(result.summary, fmt)


@cli.command()
@click.argument("model")
@click.option("--rebuild", is_flag=True, help="Rebuild the FAISS indexes from the stored vectors.")
@click.option("--type", "index_type", type=click.Choice(("auto", "flat", "hnsw", "ivf")),
              help="Index type for --rebuild: exact (flat), or approximate (hnsw, ivf); auto chooses by size.")
@click.option("--update", is_flag=True, help="Embed explanations written since the embed stage ran.")
@click.option("--text-model", default="all-MiniLM-L6-v2", show_default=True, help="Sentence embedding model for --update.")
@click.option("--explanations", "which", type=click.Choice(("llm", "all")), default="llm", show_default=True,
              help="For --update: llm explanations only, or all (also the data-derived summaries; slow on CPU).")
@click.option("--drop", is_flag=True, help="Delete MODEL's vectors and indexes (then recompute with the embed stage).")
@store_option
@format_option()
def index(model: str, rebuild: bool, index_type: str | None, update: bool, text_model: str, which: str,
          drop: bool, store_url: str | None, fmt: str) -> None:
    """Show, update, rebuild or drop MODEL's vectors and FAISS indexes (files beside the graph)."""
    from kb import vectors

    if drop and (rebuild or update):
        raise click.UsageError("--drop goes alone")
    if index_type and not rebuild:
        raise click.UsageError("--type applies to --rebuild")
    writing = rebuild or update or drop
    with open_store(_url(store_url), read_only=not writing) as store:
        if model not in queries.model_ids(store):
            raise NkbError(f"no model {model!r} in the store",
                           f"models in this store: {', '.join(queries.model_ids(store)) or 'none'}")
        if drop:
            gone = vectors.drop(store, model)
            click.echo(f"Dropped {model}'s vectors: {', '.join(gone) or 'none'}; recompute: nkb ingest {model} --stages embed")
            return
        if update and vectors.embed_explanations(store, model, text_model, summaries=which == "all") is None:
            click.echo(f"{model} has no explanations to embed yet", err=True)
        if rebuild:
            for kind in vectors.KINDS:
                try:
                    vectors.open_index(store, model, kind, index_type=index_type, rebuild=True)
                except vectors.VectorsMissing:
                    continue
        df = vectors.status(store, model)
    _echo_rows(df, fmt)


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

class _Bars(Reporter):
    """Progress for the pipeline's Reporter: tqdm bars on stderr when it is a terminal; else (a
    log file, CI) one line on stdout as each step ends, so that a long run is never silent and
    stderr keeps its one line for an error."""

    def __init__(self) -> None:
        self.bar = None
        self.tty = sys.stderr.isatty()

    def begin(self, stage: str, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=stage, unit=unit, unit_scale=True, disable=not self.tty, file=sys.stderr,
                        dynamic_ncols=True)
        self.step, self.unit, self.done, self.started = stage, unit, 0, time.perf_counter()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.done += n

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            if not self.tty:
                what = f"{self.done:,} {self.unit}s " if self.done else ""
                click.echo(f"{self.step}: {what}in {time.perf_counter() - self.started:.1f} s")

    def note(self, message: str) -> None:
        click.echo(message, err=self.tty)


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
        peak = f"  peak RSS {stage.peak_rss / 2**30:5.2f} GB" if stage.peak_rss else ""
        click.echo(f"{stage.stage:12s} {len(stage.layers_done):3d} layers{skipped}  {stage.rows:>10,d} rows  "
                   f"{stage.seconds:7.1f} s{peak}")
    click.echo(f"Ingested {report.model} into {report.store} in {report.seconds:.0f} s")


# -- nkb explain / score / import ------------------------------------------------------------

def _selection_options(f):
    f = click.option("--limit", type=click.IntRange(min=1), help="At most this many neurons.")(f)
    f = click.option("--select", "select", metavar="CYPHER",
                     help="A read-only Cypher query whose first column is neuron ids, e.g. "
                          "\"MATCH (n:Neuron) WHERE n.layer = 20 RETURN n.id\". Run as a query; one that writes is refused.")(f)
    f = click.option("--neurons", "neurons", multiple=True, metavar="ID...",
                     help="Neuron ids (MODEL/LAYER/INDEX), comma- or space-separated; repeatable.")(f)
    return f


def _backend_options(f):
    from ingest.explain.make import DEFAULT_LOCAL_MODEL

    f = click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Prompts per forward pass of a local model.")(f)
    f = click.option("--device", default="cpu", show_default=True, help="Device of a local model: cpu, cuda, auto.")(f)
    f = click.option("--local-model", default=DEFAULT_LOCAL_MODEL, show_default=True,
                     help="The local chat model: a bundled name, a Hugging Face id or a local directory.")(f)
    f = click.option("--concurrency", type=click.IntRange(min=1),
                     help="Requests in flight to the server (default 4, or concurrency in [openai]).")(f)
    f = click.option("--api-model", help="Model name on the server (default $NKB_OPENAI_MODEL or [openai] model).")(f)
    f = click.option("--base-url", help="OpenAI-compatible endpoint (default $NKB_OPENAI_BASE_URL, [openai] base_url, "
                                        "else https://api.openai.com/v1). The key comes from $NKB_OPENAI_API_KEY or "
                                        "[openai] api_key in the config file.")(f)
    return f


def _backend(kind: str, store, base_url, api_model, concurrency, local_model, device, batch_size):
    from ingest.explain.make import cache_path, make_backend

    if kind == "local":
        from ingest.models import resolve_device

        device = resolve_device(device)
    return make_backend(kind, local_model=local_model, device=device, batch_size=batch_size,
                        api={"base_url": base_url, "model": api_model, "concurrency": concurrency},
                        cache_path=cache_path(store))


@cli.command()
@click.option("--explainer", type=click.Choice(["data", "local", "api"]), default="local", show_default=True,
              help="data: a description from the stored measurements (no LLM); local: a local chat model; "
                   "api: an OpenAI-compatible server.")
@click.option("--records", "n_records", default=5, show_default=True, type=click.IntRange(min=1),
              help="Top records shown to an LLM explainer (the even ranks; odd ranks are kept for scoring).")
@_selection_options
@_backend_options
@store_option
def explain(explainer: str, n_records: int, neurons: tuple[str, ...], select: str | None, limit: int | None,
            base_url, api_model, concurrency, local_model, device, batch_size, store_url: str | None) -> None:
    """Explain selected neurons and store the explanations (OpenAI's method for LLM explainers).

    \b
    Example:
      nkb explain --explainer api --select "MATCH (n:Neuron) WHERE n.layer = 20 AND n.density > 0.01 RETURN n.id" --limit 50
    """
    from ingest.explain.make import make_explainer
    from ingest.explain.run import explain_neurons, select_neurons

    with open_store(_url(store_url), read_only=False) as store:
        ids = select_neurons(store, neurons, select, limit, what="explain")
        backend = None if explainer == "data" else _backend(explainer, store, base_url, api_model, concurrency,
                                                            local_model, device, batch_size)
        bars = _Bars()
        bars.begin("explain", len(ids), "neuron")
        try:
            report = explain_neurons(store, ids, make_explainer(explainer, backend, n_records=n_records),
                                     progress=bars.advance)
        finally:
            bars.end()
            if backend is not None and hasattr(backend, "close"):
                backend.close()
    click.echo(f"Explained {report.written} of {report.neurons} neurons in {report.seconds:.1f} s"
               + (f" ({len(report.skipped)} without records or answer)" if report.skipped else ""))


@cli.command()
@click.option("--scorer", "method", type=click.Choice(["simulation", "detection", "fuzzing"]), default="simulation",
              show_default=True, help="simulation: correlation of simulated with true activations (OpenAI); "
                                      "detection / fuzzing: balanced accuracy of a classifier (delphi).")
@click.option("--with", "backend_kind", type=click.Choice(["local", "api"]), default="local", show_default=True,
              help="The model that simulates or classifies: local, or an OpenAI-compatible server.")
@click.option("--explainer", "only", help="Score only the explanations written by this explainer.")
@click.option("--top", "n_top", default=5, show_default=True, type=click.IntRange(min=1),
              help="Held-out top records (odd ranks) per score.")
@click.option("--random", "n_random", default=5, show_default=True, type=click.IntRange(min=0),
              help="Random records per score.")
@click.option("--rescore", is_flag=True, help="Score again explanations that already have this scorer's score.")
@_selection_options
@_backend_options
@store_option
def score(method: str, backend_kind: str, only: str | None, n_top: int, n_random: int, rescore: bool,
          neurons: tuple[str, ...], select: str | None, limit: int | None, base_url, api_model, concurrency,
          local_model, device, batch_size, store_url: str | None) -> None:
    """Score the stored explanations of selected neurons."""
    from ingest.explain.make import make_scorer
    from ingest.explain.run import score_neurons, select_neurons

    with open_store(_url(store_url), read_only=False) as store:
        ids = select_neurons(store, neurons, select, limit, what="score")
        backend = _backend(backend_kind, store, base_url, api_model, concurrency, local_model, device, batch_size)
        try:
            report = score_neurons(store, ids, make_scorer(method, backend, n_top=n_top, n_random=n_random),
                                   explainer=only, rescore=rescore)
        finally:
            if hasattr(backend, "close"):
                backend.close()
    mean = f", mean {sum(report.values) / len(report.values):.3f}" if report.values else ""
    click.echo(f"Stored {report.written} {method} scores for {report.neurons} neurons in {report.seconds:.1f} s{mean}"
               + (f" ({len(report.skipped)} explanations could not be scored)" if report.skipped else ""))


@cli.command(name="import")
@click.argument("fmt", metavar="FORMAT")
@click.argument("path", type=click.Path())
@click.option("--model", help="Model id in the store (default: gpt2-xl for openai; the export's model, "
                              "and /SOURCE_SET for SAE sources, for neuronpedia).")
@click.option("--on-error", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="At a malformed file: stop there, or skip it and go on (it is reported at the end).")
@store_option
def import_(fmt: str, path: str, model: str | None, on_error: str, store_url: str | None) -> None:
    """Import published explanations, records and scores: FORMAT is openai (a local copy of OpenAI's
    neuron-explainer dataset) or neuronpedia (Neuronpedia export batches).

    Each file is imported whole or not at all; importing the same files again changes nothing.
    """
    from ingest.explain.importers import check_source, import_file

    check_source(fmt, path)  # before the store is created or opened
    with open_store(_url(store_url), create=True) as store:
        report = import_file(store, fmt, path, model, on_error=on_error)
    rows = ", ".join(f"{v:,} {k}" for k, v in sorted(report.rows.items())) or "nothing new"
    click.echo(f"Imported {report.files} files into model {report.model}: {rows}"
               + (f"; {report.unmatched_tokens} tokens not in the store's vocabulary" if report.unmatched_tokens else ""))
    if report.errors:
        for line in report.errors[1:]:
            click.echo(f"Skipped: {line}", err=True)
        raise NkbError(f"{len(report.errors)} bad file(s) skipped, nothing imported from them; first: {report.errors[0]}")


def main() -> None:
    cli(prog_name="nkb")


if __name__ == "__main__":
    main()

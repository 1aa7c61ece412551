"""The graph schema of a neuron knowledge base, as data.

One description serves every engine: the embedded store derives its ``CREATE NODE/REL
TABLE`` statements from it, the Neo4j store its constraints and indexes, the stores'
upserts their column checks, and ``docs/schema.md`` is generated from it (a test keeps
the two in agreement).

Bump ``SCHEMA_VERSION`` whenever a label, type or property changes meaning or type; a
store written by another version refuses to open and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 5

# Property types, named as in LadybugDB; Neo4j stores the same Python values.
STRING, INT64, DOUBLE, BOOL = "STRING", "INT64", "DOUBLE", "BOOLEAN"
FLOAT_LIST, DOUBLE_LIST, INT64_LIST, STRING_LIST = "FLOAT[]", "DOUBLE[]", "INT64[]", "STRING[]"
TYPES = {STRING, INT64, DOUBLE, BOOL, FLOAT_LIST, DOUBLE_LIST, INT64_LIST, STRING_LIST}


@dataclass(frozen=True)
class Prop:
    name: str
    type: str
    doc: str = ""
    # For a key property only: the value a written frame without this column gets, so that
    # writers which predate the key (and write only the default kind) need not name it.
    default: str | None = None


@dataclass(frozen=True)
class NodeType:
    label: str
    props: tuple[Prop, ...]
    doc: str
    id_format: str
    # Properties worth a secondary index on Neo4j (the id is always unique-constrained).
    indexed: tuple[str, ...] = ()
    # The property naming the model a node belongs to; delete_model follows it.
    model_prop: str | None = None
    # A text property whose terms (kb.terms) the node MENTIONS: the store writes the Term
    # nodes and MENTIONS edges whenever it writes the property.
    terms_of: str | None = None

    @property
    def columns(self) -> list[str]:
        return [p.name for p in self.props]

    def prop(self, name: str) -> Prop:
        for p in self.props:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class RelType:
    type: str
    src: str
    dst: str
    props: tuple[Prop, ...]
    doc: str
    # A relationship is identified by (src, dst, *key): upserting the same key twice updates
    # the one relationship instead of adding a second.
    key: tuple[str, ...] = ()
    # False: only ever read from its source node, so the embedded engine keeps no backward
    # index for it (LadybugDB's storage_direction 'fwd'). Statements must then walk it from
    # src to dst; one that starts at dst fails there ("Failed to get bwd data").
    backward: bool = True

    @property
    def columns(self) -> list[str]:
        return [p.name for p in self.props]


def _p(name: str, type_: str, doc: str = "", default: str | None = None) -> Prop:
    return Prop(name, type_, doc, default)


# How a neuron -> token edge was found: in the neuron's own top-k list (the lmhead stage), or
# among the token's top-k neurons (the tokens stage). Part of the key, so the two lists keep
# their own ranks when one pair is in both.
_FOUND = _p("found", STRING, "neuron: in the neuron's top-k tokens, `rank` among them (lmhead stage) | "
            "token: among the token's top-k neurons, `rank` among those (tokens stage)", default="neuron")


META = NodeType(
    "NkbMeta",
    (_p("key", STRING), _p("value", STRING)),
    "Store metadata (schema_version, created_by). Internal.",
    id_format="the key itself",
)

NODES: tuple[NodeType, ...] = (
    NodeType(
        "Model",
        (
            _p("id", STRING, "short name, unique in the store, e.g. smollm2-135m"),
            _p("kind", STRING, "lm (a language model) | sae (a sparse-autoencoder dictionary)"),
            _p("source", STRING, "where it was loaded from: HF id, local path or bundled name"),
            _p("architecture", STRING, "adapter name: llama | gpt2 | gpt_neox | sae"),
            _p("n_layers", INT64),
            _p("d_model", INT64),
            _p("d_mlp", INT64, "neurons per layer"),
            _p("vocab_size", INT64),
            _p("tokenizer", STRING, "Token.tokenizer shared by every model with the same vocabulary"),
            _p("base_model", STRING, "for an SAE: the Model.id whose activations it encodes"),
            _p("fingerprint", STRING, "hash of the weights' identity; a different model under the same id is refused"),
            _p("config", STRING, "the model config as JSON"),
            _p("window_prefix", INT64_LIST, "token ids put before every corpus window when activations were "
               "recorded (the BOS or document separator); empty when none"),
        ),
        "A subject model, or an SAE dictionary trained on one.",
        id_format="<name>",
    ),
    NodeType(
        "Neuron",
        (
            _p("id", STRING, "<model>/<layer>/<index>"),
            _p("model", STRING, "Model.id"),
            _p("layer", INT64),
            _p("idx", INT64, "position of the neuron in its layer (named so: `index` is reserved in some Cypher dialects)"),
            _p("kind", STRING, "mlp | sae"),
            _p("max_act", DOUBLE, "largest activation seen on the corpus"),
            _p("min_act", DOUBLE, "smallest activation seen on the corpus"),
            _p("mean_act", DOUBLE),
            _p("var_act", DOUBLE, "population variance of the activation over corpus tokens"),
            _p("density", DOUBLE, "fraction of corpus tokens with activation > 0"),
            _p("n_tokens", INT64, "corpus tokens the statistics were computed over"),
            _p("quantile_boundaries", DOUBLE_LIST, "bin edges of the per-snippet max activation for quantile records"),
            _p("n2g_precision", DOUBLE),
            _p("n2g_recall", DOUBLE),
            _p("n2g_f1", DOUBLE),
            _p("explanation", STRING, "text of the best-scoring explanation (denormalised for filtering)"),
            _p("explanation_score", DOUBLE, "score of that explanation"),
        ),
        "One MLP neuron or SAE feature.",
        id_format="<model>/<layer>/<index>",
        indexed=("model", "layer"),
        model_prop="model",
    ),
    NodeType(
        "Token",
        (
            _p("id", STRING, "<tokenizer>/<token_id>"),
            _p("tokenizer", STRING),
            _p("token_id", INT64),
            _p("text", STRING, "the token decoded on its own, leading space kept; a token holding part of a "
               "UTF-8 character is spelled by its bytes, undecodable ones escaped: '\\xe2\\x80'"),
        ),
        "A vocabulary entry, shared by every model with the same tokenizer.",
        id_format="<tokenizer>/<token_id>",
        indexed=("text", "tokenizer"),
    ),
    NodeType(
        "TokenText",
        (_p("id", STRING, "a token's text (Token.text), leading space kept, e.g. ' dog'"),),
        "The way in from a token's text: one node per distinct text, SPELLS to every Token with "
        "that text (in every tokenizer). A lookup by text is then a key lookup on both engines; "
        "the embedded engine has no index on Token.text and would scan the vocabulary.",
        id_format="the text itself (the empty text of padding rows has no TokenText)",
    ),
    NodeType(
        "Snippet",
        (
            _p("id", STRING, "<tokenizer>/<hash of token ids>"),
            _p("tokenizer", STRING),
            _p("corpus", STRING, "corpus name it was cut from"),
            _p("token_ids", INT64_LIST),
            _p("tokens", STRING_LIST, "each token's text, as Token.text spells it"),
            _p("text", STRING, "decoded text of the whole window"),
        ),
        "A window of corpus text, stored once and shared by every neuron that fires on it.",
        id_format="<tokenizer>/<16 hex digits of blake2b(token ids)>",
        indexed=("tokenizer",),
    ),
    NodeType(
        "Explanation",
        (
            _p("id", STRING, "<neuron id>/<explainer>/<method>, '/' and '%' in explainer and method escaped"),
            _p("neuron", STRING, "Neuron.id"),
            _p("model", STRING, "Model.id"),
            _p("text", STRING),
            _p("explainer", STRING, "what wrote it: an LLM name, or 'data' for data-derived"),
            _p("method", STRING, "how: top-activations (an LLM, OpenAI's method), summary or n2g "
               "(data-derived), or an imported source's own name"),
            _p("created_at", STRING, "ISO-8601 time"),
        ),
        "A natural-language explanation of one neuron.",
        id_format="<neuron id>/<explainer>/<method> (kb.ids.ExplanationId; '/' and '%' in the parts as %2F, %25)",
        indexed=("neuron",),
        model_prop="model",
        terms_of="text",
    ),
    NodeType(
        "Term",
        (_p("id", STRING, "a run of an explanation's text between ASCII spaces and punctuation, as written; "
            "'*' is the term every explanation mentions"),),
        "The term index of explanation texts (kb.terms): a phrase search reads only the explanations "
        "that mention a term containing the phrase's longest run. Written by the store with every "
        "Explanation text.",
        id_format="the run itself, e.g. 'TypeError' ('*' for every explanation)",
    ),
    NodeType(
        "Score",
        (
            _p("id", STRING, "<explanation id>/<method>/<scorer>/<split>"),
            _p("model", STRING, "Model.id"),
            _p("method", STRING, "simulation (correlation) | detection | fuzzing (balanced accuracy) | n2g (F1)"),
            _p("value", DOUBLE),
            _p("scorer", STRING, "what computed it"),
            _p("split", STRING, "which records: top | random | all | holdout (top records the explainer "
               "did not see, plus random records)"),
            _p("explanation", STRING, "Explanation.id"),
            _p("records", STRING, "the records scored, as kind:ranks, e.g. top:1,3,5;random:0,1 "
               "(or the source's own name for imported scores)"),
            _p("n_records", INT64, "how many records were scored"),
            _p("f1", DOUBLE, "detection / fuzzing: F1 of the scorer's answers (value is the balanced accuracy)"),
            _p("auc", DOUBLE, "detection / fuzzing: ROC AUC of the scorer's probabilities, where it gives them"),
            _p("created_at", STRING, "ISO-8601 time"),
        ),
        "One score of one explanation.",
        id_format="<explanation id>/<method>/<scorer>/<split> (kb.ids.ScoreId, parts escaped likewise)",
        model_prop="model",
    ),
    NodeType(
        "N2GNode",
        (
            _p("id", STRING, "<neuron id>/<path of token ids from the root>"),
            _p("neuron", STRING, "Neuron.id"),
            _p("model", STRING, "Model.id"),
            _p("token", STRING, "token text this trie node matches ('*' for any)"),
            _p("token_id", INT64, "-1 for the wildcard"),
            _p("activation", DOUBLE, "predicted activation when the path ends here"),
            _p("importance", DOUBLE),
            _p("is_end", BOOL, "a pattern ends here"),
            _p("depth", INT64, "0 = the firing token, 1 = one token back, ..."),
        ),
        "A node of one neuron's Neuron-to-Graph trie.",
        id_format="<neuron id>/<token ids from the root, joined by '.'>",
        indexed=("neuron",),
        model_prop="model",
    ),
)

_N = "Neuron"
RELS: tuple[RelType, ...] = (
    RelType("HAS_NEURON", "Model", _N, (), "Model owns neuron."),
    RelType(
        "PROMOTES", _N, "Token",
        (_p("logit", DOUBLE, "direct logit effect of the output direction"), _p("rank", INT64, "0 = strongest"), _FOUND),
        "Output weights through the final norm and LM head: most increased logits.",
        key=("found",),
    ),
    RelType(
        "SUPPRESSES", _N, "Token",
        (_p("logit", DOUBLE), _p("rank", INT64), _FOUND),
        "Output weights through the final norm and LM head: most decreased logits.",
        key=("found",),
    ),
    RelType(
        "READS", _N, "Token",
        (_p("weight", DOUBLE), _p("rank", INT64), _p("via", STRING, "gate | up | in: which input matrix"), _FOUND),
        "Input weight direction(s) against the unembedding: tokens whose direction the neuron reads.",
        key=("via", "found"),
    ),
    RelType(
        "ACTIVATES_ON", _N, "Snippet",
        (
            _p("kind", STRING, "top | random | quantile_<k>"),
            _p("rank", INT64, "0 = first within its kind"),
            _p("max", DOUBLE, "largest activation in the window"),
            _p("position", INT64, "token position of that maximum"),
            _p("activations", STRING, "the neuron's activation at every token of the window: base64 of "
               "little-endian float16 (kb.records.decode_activations)"),
        ),
        "An activation record: the neuron's activations on one snippet.",
        key=("kind",),
        # The largest table by far (SmolLM2: 1.84M rows of 172-character strings). Kept in one
        # direction, one COPY of it needs 2 GiB of buffer pool instead of 2.5, and takes 10.8 s
        # instead of 28.2 (scripts/bench_store_pool.py).
        backward=False,
    ),
    RelType("FIRES_ON", _N, "Token", (_p("activation", DOUBLE),), "N2G token index: the neuron fires on this token."),
    RelType("CONTEXT", _N, "Token", (_p("importance", DOUBLE),), "N2G token index: this token in the context matters."),
    RelType("SPELLS", "TokenText", "Token", (), "This is the token's text (Token.text)."),
    RelType("N2G_ROOT", _N, "N2GNode", (), "Entry points of the neuron's N2G trie."),
    RelType("HAS_N2G_NODE", _N, "N2GNode", (), "Every node of the neuron's N2G trie (the roots too)."),
    RelType("N2G_PREV", "N2GNode", "N2GNode", (), "Walks one token further back in the context."),
    RelType("EXPLAINED_BY", _N, "Explanation", (), "Neuron has explanation."),
    RelType("HAS_SCORE", "Explanation", "Score", (), "Explanation has score."),
    RelType("MENTIONS", "Explanation", "Term", (), "The explanation's text has this term (kb.terms); written by the store."),
    RelType(
        "SIMILAR_TO", _N, _N,
        (_p("score", DOUBLE, "cosine similarity of the two neurons' vectors"),
         _p("method", STRING, "weights_out | weights_in | explanation | activations (kb.vectors.KINDS)"),
         _p("rank", INT64, "0 = nearest")),
        "k-nearest-neighbour edge under one similarity method (the similar stage).",
        key=("method",),
    ),
    RelType(
        "MATCHES", _N, _N,
        (_p("similarity", DOUBLE, "cosine similarity of the matched pair under `method`"),
         _p("method", STRING, "weights_out | weights_in | explanation | activations"),
         _p("run", STRING, "which matching run produced it: <model>/<layer>-><model>/<layer>")),
        "Hungarian assignment between two layers or two models (kb.match), from the lower layer or the first model.",
        key=("method", "run"),
    ),
    RelType("CONNECTS_TO", _N, _N,
            (_p("weight", DOUBLE, "W_out(l1)[i] . W_in(l2)[j], the input being the gate for gated MLPs"),
             _p("rank", INT64, "0 = largest |weight| among the source neuron's edges")),
            "Virtual weight from a neuron to a neuron of a later layer: top-k by |weight| per source (the similar stage)."),
)

NODE_BY_LABEL: dict[str, NodeType] = {n.label: n for n in NODES}
REL_BY_TYPE: dict[str, RelType] = {r.type: r for r in RELS}


def node_type(label: str) -> NodeType:
    from kb.errors import SchemaError

    try:
        return NODE_BY_LABEL[label]
    except KeyError:
        raise SchemaError(f"unknown node label {label!r}", f"labels: {', '.join(NODE_BY_LABEL)}") from None


def rel_type(type_: str) -> RelType:
    from kb.errors import SchemaError

    try:
        return REL_BY_TYPE[type_]
    except KeyError:
        raise SchemaError(f"unknown relationship type {type_!r}", f"types: {', '.join(REL_BY_TYPE)}") from None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def schema_markdown() -> str:
    """docs/schema.md, generated from this module (``python -m kb.schema > docs/schema.md``)."""
    out = [
        "# Graph schema",
        "",
        f"Schema version **{SCHEMA_VERSION}**. Generated from `kb/schema.py` by `python -m kb.schema`;",
        "a test fails when this page and the code disagree. Both engines hold exactly these labels,",
        "relationship types and properties. A store records its schema version in `NkbMeta`; a store",
        "written by another version refuses to open and says what to do.",
        "",
        "Ids are strings with one canonical form each, parsed in one place (`kb/ids.py`).",
        "Model and tokenizer names may contain `/`, so ids are split from the right.",
        "",
        "## Nodes",
    ]
    for n in NODES:
        out += ["", f"### `{n.label}`", "", n.doc, "", f"Id: `{n.id_format}`.", "",
                "| property | type | meaning |", "|---|---|---|"]
        out += [f"| `{p.name}` | {p.type} | {_cell(p.doc)} |" for p in n.props]
    out += ["", "## Relationships", "",
            "A relationship is identified by its endpoints and its key properties: writing the same",
            "key twice updates one relationship instead of adding a second.", "",
            "| type | from → to | key | properties | meaning |", "|---|---|---|---|---|"]
    for r in RELS:
        props = ", ".join(f"`{p.name}` {p.type}" for p in r.props) or "—"
        key = ", ".join(f"`{k}`" + (f" (default `{d}`)" if (d := next(p.default for p in r.props if p.name == k))
                                   else "") for k in r.key) or "—"
        doc = r.doc + ("" if r.backward else " Walk it from its source: the embedded engine stores it forward only.")
        out.append(f"| `{r.type}` | {r.src} → {r.dst} | {key} | {props} | {_cell(doc)} |")
    out += ["", "## Recomputing an activation record", "",
            "An `ACTIVATES_ON` record can be reproduced from the KB alone. Run the model (`Model.source`)",
            "on `Model.window_prefix + Snippet.token_ids` as one sequence, with no other special tokens",
            "added, and read the input of layer `Neuron.layer`'s MLP output projection at neuron",
            "`Neuron.idx`: the values at the snippet's positions (the prefix dropped) are the record's",
            "`activations` (`kb.records.decode_activations`; float16, so equal to about 1e-3 relative),",
            "`max` is their largest value and `position` the first position that holds it.",
            "The neuron's statistics (`max_act`, `mean_act`, ...) are over the same positions of every window."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")

"""Explanations of neurons and their scores.

- ``neurons``: what an explainer or scorer sees of a neuron (records, LM-head and N2G tokens),
  read from the store in bulk;
- ``prompts``: the prompts, after OpenAI's neuron-explainer method (top records as
  token<TAB>activation lines, activations normalised to 0-10, the completion primed with
  "the main thing this neuron does is find") and delphi's detection and fuzzing, with
  few-shot examples written by this project;
- ``llm``: the two language-model back ends, a local transformers chat model and any
  OpenAI-compatible server (bounded concurrency, retries with backoff, a response cache);
- ``explainers``: the explainers behind one interface (``data``, ``local``, ``api``);
- ``scoring``: the arithmetic (correlation, balanced accuracy, F1, AUC), free of any model;
- ``scorers``: simulation, detection and fuzzing scorers;
- ``importers``: OpenAI's public neuron-explainer dataset and Neuronpedia exports;
- ``run``: selection of neurons, and the explain / score runs that write to the store.

Nothing here imports torch at import time: the CLI lists these commands on a query-only
install, and only the local model back end needs the model stack.
"""

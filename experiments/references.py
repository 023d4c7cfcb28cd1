"""Reference rows of a bits/dim table that need no training: lossless codecs on the same test images.

The likelihood-evaluation tutorial this library follows asks for PNG and WebP bits/dim beside every
likelihood table (a model that does not beat a general-purpose codec has learned little). A table
with a :class:`experiments.tables.CodecReference` gets one row per codec: its bits/dim (every byte of
one file per image, ``hybrids.metrics.compression``) in the reference column, on the first N test
images of the rows' dataset, N being what that column's evaluator used.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from absl import logging

from experiments.tables import Table
from hybrids.data import load_dataset
from hybrids.metrics.compression import png_bits_per_dim, webp_bits_per_dim

CODECS = (("PNG", png_bits_per_dim), ("WebP (lossless)", webp_bits_per_dim))


def codec_reference_rows(table: Table, datasets: Sequence[str], flat_results: Sequence[dict[str, Any]],
                         data_dir: str | None) -> list[dict[str, Any]]:
    """The codec rows of ``table`` in ``experiments.reproduce``'s row format (empty when the table has
    no codec reference, no row has results yet, or the rows disagree on the dataset).

    Args:
        table: the table (its ``codec_reference`` names the column and the results key of N).
        datasets: the dataset name of every training with results (``results.json``'s ``dataset``).
        flat_results: the flattened results of those trainings.
        data_dir: where on-disk datasets are read from (None: embedded data or ``$HYBRIDS_DATA``).
    """
    ref = table.codec_reference
    if ref is None or not datasets:
        return []
    if len(set(datasets)) > 1:
        logging.warning("%s: rows trained on different datasets %s; no codec reference rows.",
                        table.name, sorted(set(datasets)))
        return []
    counts = Counter(int(flat[ref.num_examples_key]) for flat in flat_results if ref.num_examples_key in flat)
    num_examples = counts.most_common(1)[0][0] if counts else None
    try:
        test = load_dataset(datasets[0], split="test", data_dir=data_dir)
    except (FileNotFoundError, ValueError) as err:
        logging.warning("%s: no codec reference rows (%s).", table.name, err)
        return []
    images = test.data[:num_examples]
    if test.num_levels is None or images.ndim != 4:
        return []
    n = int(images.shape[0])
    rows = []
    for name, bits_per_dim in CODECS:
        value = bits_per_dim(images)
        rows.append({
            "row": f"{name} (reference: first {n} test images)", "status": "reference", "error": "",
            "ours": {col.name: (value if col.name == ref.column else None) for col in table.columns},
            "ours_sd": {col.name: None for col in table.columns}, "n_seeds": "–", "paper": {},
            "command": f"hybrids.metrics.compression.{bits_per_dim.__name__}(first {n} test images of {datasets[0]})",
        })
    return rows

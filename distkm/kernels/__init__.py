"""Per-chunk kernels: numpy and scipy only (no dask, distributed or zarr import; a test checks).

Each function takes one in-memory block of rows (or the small partial results
of blocks) and returns small numpy results, in the manner of scikit-learn's
``_update_chunk_dense`` and dask's ``mean_chunk``/``mean_combine``; the
engine (:mod:`distkm.engine`) maps them over row blocks and combines their
results in a tree. The modules:

* :mod:`~distkm.kernels.assign`: centers with ``0.5||c||^2``, nearest center, labels, distances.
* :mod:`~distkm.kernels.lloyd`: the data summary, a block's partial statistics, exact final
  statistics, farthest points, empty-cluster relocation and the center update.
* :mod:`~distkm.kernels.pruned`: the same partial statistics, bit for bit, computing only the
  distances that per-row bounds kept between iterations do not settle (Hamerly; Yinyang).
* :mod:`~distkm.kernels.kmeans_parallel`: a k-means|| sampling round over a block.
* :mod:`~distkm.kernels.sampling`: seeded random keys and top rows, for uniform draws.
* :mod:`~distkm.kernels.evaluation`: contingency tables, members and silhouettes of a block.
* :mod:`~distkm.kernels.distort`: the image distortions of ``distkm augment``.

The functions the engine calls are also importable from this package.
"""

from distkm.kernels.assign import (  # noqa: F401
    assign_block,
    assign_labels,
    nearest_centers,
    palette_lookup,
    prepare_centers,
    row_blocks,
    squared_distances,
)
from distkm.kernels.evaluation import (  # noqa: F401
    ChunkEvaluation,
    evaluate_assignment,
    evaluate_chunk,
    merge_evaluations,
    silhouette_score,
)
from distkm.kernels.kmeans_parallel import (  # noqa: F401
    NearestCandidate,
    RoundPartial,
    kmeans_parallel_round,
    merge_round_partials,
)
from distkm.kernels.lloyd import (  # noqa: F401
    MAX_EXACT_BLOCK_ROWS,
    DataSummary,
    FarPoints,
    FinalStats,
    PartialStats,
    assignment_inertia,
    assignment_stats,
    farthest_points,
    final_stats,
    merge_farthest_points,
    merge_final_stats,
    merge_partial_stats,
    merge_summaries,
    partial_stats,
    relocate_empty_clusters,
    summarize_chunk,
    update_centers,
)
from distkm.kernels.margins import Bounds, center_groups, center_shifts, n_groups  # noqa: F401
from distkm.kernels.pruned import pruned_partial_stats  # noqa: F401

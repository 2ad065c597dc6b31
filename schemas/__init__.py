"""promptbatch's data: the job file, input rows, the output schema and the price table.

Pure definitions, no I/O; ``flows`` and ``workers`` build on these.
"""

from schemas.dates import placeholders, pointer_folder, resolve
from schemas.endpoint import AZURE_INFERENCE_API_VERSION, EndpointSpec, ModelSpec
from schemas.job import JobSpec, job_from_dict, parse_job
from schemas.job_file import JobFileError
from schemas.models import (
    APPROXIMATE_SPREAD,
    PRICES_AS_OF,
    SHIPPED_TOKENIZERS,
    ModelInfo,
    Price,
    TokenizerName,
    UnknownModelError,
    canonical_name,
    known_models,
    model_info,
)
from schemas.output import OUTPUT_COLUMNS, OUTPUT_SCHEMA, STATUSES, Status, passthrough_name
from schemas.params import DEFAULT_MAX_TOKENS, Params, PromptSpec
from schemas.passthrough import (
    InputColumns,
    InputSchema,
    PassthroughError,
    conform,
    output_table,
    part_schema,
    with_labels,
)
from schemas.plan import Planned, Refusal, RefusalKind, over_context, plan_counted
from schemas.response import ResponseSpec
from schemas.rows import BadRowError, PromptRow, RowRead, build_row, derive_id, request_digest
from schemas.shards import ShardLayout

__all__ = [
    "APPROXIMATE_SPREAD",
    "AZURE_INFERENCE_API_VERSION",
    "DEFAULT_MAX_TOKENS",
    "OUTPUT_COLUMNS",
    "OUTPUT_SCHEMA",
    "PRICES_AS_OF",
    "SHIPPED_TOKENIZERS",
    "STATUSES",
    "BadRowError",
    "InputColumns",
    "InputSchema",
    "PassthroughError",
    "EndpointSpec",
    "JobFileError",
    "JobSpec",
    "ModelInfo",
    "ModelSpec",
    "Params",
    "Planned",
    "Price",
    "PromptRow",
    "PromptSpec",
    "Refusal",
    "RefusalKind",
    "ResponseSpec",
    "RowRead",
    "ShardLayout",
    "Status",
    "TokenizerName",
    "UnknownModelError",
    "build_row",
    "canonical_name",
    "conform",
    "derive_id",
    "job_from_dict",
    "known_models",
    "model_info",
    "output_table",
    "over_context",
    "parse_job",
    "part_schema",
    "passthrough_name",
    "placeholders",
    "plan_counted",
    "pointer_folder",
    "request_digest",
    "resolve",
    "with_labels",
]

"""`gcp-storage-emulator` with object downloads that carry their generation, as real GCS does.

    python -m benchmarks.faults.gcs_emulator start --host localhost --port P --in-memory --default-bucket B

Same arguments as `gcp-storage-emulator`. Real GCS answers every object download with
`x-goog-generation` and `x-goog-metageneration` headers; the emulator (2026.7) sends neither.
TensorStore's gcs driver reads the generation of an existing OCDBT manifest before it updates
it conditionally, so on the bare emulator the second writer of a checkpoint (a resumed run saving
the step its killed predecessor had begun, or one save whose writes are committed in two batches,
which happens under load) fails with "Malformed StorageGeneration", although the same program
works on GCS. The fault suite and tests start this wrapper so that what they check is jaxnets,
not that gap.
"""
from __future__ import annotations

import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        obj = None
    if obj is not None:   # headers are sent when the response closes, after the handler
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    return _download(request, response, storage, *args, **kwargs)


def install() -> None:
    objects.download = download_with_generation   # objects.get(alt=media) calls it by this name
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is _download:
                handlers[method] = download_with_generation


if __name__ == "__main__":
    install()
    sys.exit(main())

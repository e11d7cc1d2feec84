"""One candidate data path of bench/datapath.py: upload every file of a folder to S3 with the
checksums S3 verifies (x-amz-checksum-sha256), 16 at a time, and print what it did as JSON.

    python bench/_put_client.py MODE --endpoint URL --bucket B --prefix P --dir D

Run by bench/datapath.py as a child process (its wall time, CPU and peak RSS are the
candidate's), with the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. MODE:

* ``pdata-sync``: the product's path (pdata_sync.archive.uploads.put_small: obstore since ADR
  0011, called from 16 threads as the uploader does; SHA-256 checked by S3, metadata, the
  ETag compared with our MD5 afterwards).
* ``botocore``: the path before ADR 0011, one boto3 client's ``put_object`` with SHA-256,
  Content-MD5 and metadata, 16 threads.
* ``signed-httpx``: the same request signed with botocore's SigV4 signer and sent on a
  pooled httpx connection (no botocore request machinery), 16 threads.
* ``obstore``: obstore (Rust, GIL released), ``checksum_algorithm="sha256"``, 16 concurrent
  ``put_async``.
* ``crt``: the AWS Common Runtime S3 client (awscrt), SHA-256 checksum in a header.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONCURRENCY = 16
CONTENT_TYPE = "application/dicom"


def _files(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _product_client(args: argparse.Namespace):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pdata_sync.archive.s3_client import make_client
    from pdata_sync.base.config import S3Config

    return make_client(S3Config(bucket=args.bucket, region="us-east-1", endpoint_url=args.endpoint))


def run_pdata_sync(args: argparse.Namespace, files: list[Path]) -> None:
    from pdata_sync.archive.uploads import put_small

    client = _product_client(args)

    def one(path: Path) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        put_small(
            client,
            args.bucket,
            f"{args.prefix}{path.name}",
            data,
            {"sha256": digest.hex()},
            sha256_digest=digest,
        )

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, files))


def run_botocore(args: argparse.Namespace, files: list[Path]) -> None:
    client = _product_client(args)

    def one(path: Path) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        client.put_object(
            Bucket=args.bucket,
            Key=f"{args.prefix}{path.name}",
            Body=data,
            ContentType=CONTENT_TYPE,
            ContentMD5=_b64(hashlib.md5(data).digest()),  # noqa: S324 - S3's own check
            ChecksumSHA256=_b64(digest),
            Metadata={"sha256": digest.hex()},
        )

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, files))


def run_signed_httpx(args: argparse.Namespace, files: list[Path]) -> None:
    import botocore.session
    import httpx
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = botocore.session.get_session().get_credentials().get_frozen_credentials()
    signer = SigV4Auth(credentials, "s3", "us-east-1")
    http = httpx.Client(limits=httpx.Limits(max_connections=CONCURRENCY), timeout=60)

    def one(path: Path) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        url = f"{args.endpoint}/{args.bucket}/{args.prefix}{path.name}"
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Content-MD5": _b64(hashlib.md5(data).digest()),  # noqa: S324 - S3's own check
            "x-amz-checksum-sha256": _b64(digest),
            "x-amz-content-sha256": digest.hex(),
            "x-amz-meta-sha256": digest.hex(),
        }
        request = AWSRequest(method="PUT", url=url, data=data, headers=headers)
        signer.add_auth(request)
        response = http.put(url, content=data, headers=dict(request.headers.items()))
        response.raise_for_status()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, files))
    http.close()


def run_obstore(args: argparse.Namespace, files: list[Path]) -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        args.bucket,
        config={
            "endpoint": args.endpoint,
            "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "region": "us-east-1",
            "checksum_algorithm": "sha256",
        },
        client_options={"allow_http": True},
    )

    async def main() -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(path: Path) -> None:
            async with gate:
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                await obstore.put_async(
                    store,
                    f"{args.prefix}{path.name}",
                    data,
                    attributes={"Content-Type": CONTENT_TYPE, "sha256": sha},
                    use_multipart=False,
                )

        await asyncio.gather(*(one(p) for p in files))

    asyncio.run(main())


def run_crt(args: argparse.Namespace, files: list[Path]) -> None:
    from urllib.parse import urlsplit

    from awscrt.auth import AwsCredentialsProvider
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import (
        S3ChecksumAlgorithm,
        S3ChecksumConfig,
        S3ChecksumLocation,
        S3Client,
        S3RequestTlsMode,
        S3RequestType,
    )

    host = urlsplit(args.endpoint).netloc
    loop = EventLoopGroup()
    bootstrap = ClientBootstrap(loop, DefaultHostResolver(loop))
    credentials = AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    client = S3Client(
        bootstrap=bootstrap,
        region="us-east-1",
        credential_provider=credentials,
        tls_mode=S3RequestTlsMode.DISABLED,
        throughput_target_gbps=10,
    )
    checksum = S3ChecksumConfig(
        algorithm=S3ChecksumAlgorithm.SHA256, location=S3ChecksumLocation.HEADER
    )
    batch = CONCURRENCY * 4
    for start in range(0, len(files), batch):
        pending = []
        for path in files[start : start + batch]:
            headers = HttpHeaders(
                [
                    ("Host", host),
                    ("Content-Type", CONTENT_TYPE),
                    ("Content-Length", str(path.stat().st_size)),
                ]
            )
            request = HttpRequest("PUT", f"/{args.bucket}/{args.prefix}{path.name}", headers)
            pending.append(
                client.make_request(
                    type=S3RequestType.PUT_OBJECT,
                    request=request,
                    checksum_config=checksum,
                    send_filepath=str(path),  # the CRT reads the file itself
                )
            )
        for meta in pending:
            meta.finished_future.result(120)


MODES = {
    "pdata-sync": run_pdata_sync,
    "botocore": run_botocore,
    "signed-httpx": run_signed_httpx,
    "obstore": run_obstore,
    "crt": run_crt,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    files = _files(args.dir)
    t0 = time.perf_counter()
    MODES[args.mode](args, files)
    print(json.dumps({"mode": args.mode, "files": len(files), "seconds": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

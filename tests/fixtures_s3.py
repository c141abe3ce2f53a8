"""A real S3 endpoint on loopback: moto in server mode, with request authentication enforced.

``MotoS3`` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 (a free port), creates an IAM
user with an access key allowed ``s3:*``, then switches moto's authentication on, so a wrong key
is refused with 403 like real S3. Objects are uploaded with boto3 using that key.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

BUCKET = "images"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """One moto server, its endpoint, a valid key pair and a boto3 client using it."""

    def __init__(self) -> None:
        import boto3
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._settings = settings
        self._old_count = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        anon = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup-secret"}
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, **anon)
        iam.create_user(UserName="locpick")
        iam.put_user_policy(
            UserName="locpick",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="locpick")["AccessKey"]
        self.key_id: str = key["AccessKeyId"]
        self.secret: str = key["SecretAccessKey"]
        # From now on every request must be signed with a key moto knows.
        ActionAuthenticatorMixin.request_count = 0
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )
        self.client.create_bucket(Bucket=BUCKET)

    def put(self, key: str, data: bytes) -> str:
        """Upload ``data``; returns its ``s3://`` URL."""
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)
        return f"s3://{BUCKET}/{key}"

    def env(self, *, key_id: str | None = None, secret: str | None = None) -> dict[str, str]:
        """The standard AWS environment pointing at this server."""
        return {
            "AWS_ACCESS_KEY_ID": key_id or self.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def stop(self) -> None:
        self.server.stop()
        self._settings.INITIAL_NO_AUTH_ACTION_COUNT = self._old_count

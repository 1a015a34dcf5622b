"""Prepare a fresh moto server for one test (test-support/src/s3.rs runs this).

Creates an IAM user allowed s3:* with an access key, and a bucket, then turns moto's
authentication on, so that from then on every request must carry a valid SigV4 signature from a
known key (by default moto accepts anything). Prints the user's key as JSON on stdout.

    python moto_setup.py ENDPOINT BUCKET
"""

import json
import sys
import urllib.request

import boto3


def main() -> None:
    endpoint, bucket = sys.argv[1], sys.argv[2]
    # Before authentication is on, moto accepts any key; these only let boto3 sign.
    setup = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="resources-test")
    iam.put_user_policy(
        UserName="resources-test",
        PolicyName="s3-all",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="resources-test")["AccessKey"]
    boto3.client("s3", **setup).create_bucket(Bucket=bucket)
    # Zero unauthenticated requests allowed from now on. The body must not be form-encoded,
    # or moto's handler reads it as empty.
    request = urllib.request.Request(
        endpoint + "/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    json.dump(
        {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]},
        sys.stdout,
    )


if __name__ == "__main__":
    main()

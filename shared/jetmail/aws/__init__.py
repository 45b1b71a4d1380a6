"""AWS adapters: boto3 clients made once per process, SNS message verification, SnapStart hooks."""

"""SMTP submission throughput: messages per second `jetmail smtp-server` accepts (250 after DATA) from
concurrent smtplib clients, each on one STARTTLS + AUTH session, one recipient per message. Accepting
means: the key's rate check, the body in the object store, the record written, the job published; the
workers' sending is not part of the figure. Called by run.py (``make bench``) on its own stack."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BODY = (b"From: Bench <bench@example.com>\r\nTo: {to}\r\nSubject: bench\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + b"Hello from the bench.\r\n" * 40)


def submission_throughput(env: dict[str, str], token: str, root: Path, *, messages: int,
                          clients: int = 4) -> dict[str, Any]:
    from jetmail.devstack.stack import free_port, stop_process, tcp_ready, wait_until
    from jetmail.messaging.smtp_server import self_signed

    cert, key = self_signed(str(root / "tls"))
    port = free_port()
    log = (root / "smtp-server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "jetmail.cli", "smtp-server", "--host", "127.0.0.1", "--port",
                             str(port), "--tls-port", "0"],
                            env={**env, "JETMAIL_SUBMISSION_CERT_FILE": cert, "JETMAIL_SUBMISSION_KEY_FILE": key,
                                 "JETMAIL_API_RATE_PER_MINUTE": "0"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(tcp_ready(port), timeout=30, what="smtp-server", proc=proc)
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        per_client = max(1, messages // clients)
        refused: list[str] = []

        def client(n: int) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.starttls(context=context)
                smtp.login("bench", token)
                for i in range(per_client):
                    to = f"sub{n}-{i}@example.com"
                    try:
                        smtp.sendmail("bench@example.com", [to], BODY.replace(b"{to}", to.encode()))
                    except smtplib.SMTPException as exc:
                        refused.append(str(exc))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        stop_process(proc.pid)
    accepted = per_client * clients - len(refused)
    return {"clients": clients, "accepted": accepted, "refused": len(refused), "per_s": accepted / elapsed}

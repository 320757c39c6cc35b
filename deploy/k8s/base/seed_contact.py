"""Wait for a node's admin endpoint and write the node's contact to a file: the swarm pods' init container.

    python seed_contact.py URL FILE [--timeout SECONDS]

URL is the node's ``/ui/api/status`` (``zmqagents node --admin HOST:PORT`` serves it; its JSON names
the node's ``contact``). Every second until the timeout it asks again, so the pod waits for a seed
that is still starting (not yet in DNS, not yet listening). The contact is checked the way
``--bootstrap`` will read it (``Contact.parse``), then written whole (a temporary file renamed), so
the next container finds either nothing or the complete line. Exit 0 once written, 1 at the
timeout with the last reason on stderr, 2 on bad arguments.

Why read the contact rather than configure it: the seed makes a new key each time it starts (no key
in the image or in a Secret), so its public key is known only once it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from zmqagents.identity import Contact, IdentityError

MAX_ANSWER = 1 << 20  # the status JSON lists the seed's routing table: well under this


def fetch_contact(url: str, timeout: float) -> Contact:
    """One GET of ``url``; the contact in its JSON answer. Raises ValueError or OSError with the reason."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body = answer.read(MAX_ANSWER + 1)
    if len(body) > MAX_ANSWER:
        raise ValueError(f"answer over {MAX_ANSWER} bytes")
    try:
        status = json.loads(body)
        text = status["contact"]
    except (ValueError, TypeError, KeyError):
        raise ValueError("answer is not JSON with a \"contact\"") from None
    if not isinstance(text, str):
        raise ValueError("\"contact\" is not a string")
    try:
        return Contact.parse(text)
    except IdentityError as exc:
        raise ValueError(str(exc)) from None


def wait_and_write(url: str, path: str, timeout: float, interval: float = 1.0) -> Contact:
    """Ask ``url`` every ``interval`` s until it names a contact, write it to ``path``; TimeoutError
    after ``timeout`` s, naming the last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            contact = fetch_contact(url, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            break
        except (OSError, ValueError) as exc:  # urllib.error.URLError is an OSError
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if time.monotonic() + interval > deadline:
                raise TimeoutError(f"no contact from {url} in {timeout:g} s: {reason}") from None
            time.sleep(interval)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{contact}\n")
    os.replace(tmp, path)
    return contact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the node's /ui/api/status, e.g. http://seed-0.seed:9464/ui/api/status")
    parser.add_argument("file", help="where to write the contact")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the node (default 600)")
    args = parser.parse_args(argv)
    try:
        contact = wait_and_write(args.url, args.file, args.timeout)
    except TimeoutError as exc:
        print(f"seed_contact: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"contact": str(contact), "file": args.file}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

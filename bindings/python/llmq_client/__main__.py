"""python3 -m llmq_client: a small command line.

    python3 -m llmq_client ping
    python3 -m llmq_client chat MODEL "a prompt" [--stream] [--max-tokens N]
    python3 -m llmq_client status

Options: --endpoint (default $LLMQ_ENDPOINT or tcp://127.0.0.1:5555),
--timeout, --broker-timeout, --curve-cert, --broker-key."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import __version__
from .client import Client
from .errors import LlmqError


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m llmq_client",
                                 description="llmq client (ping, status, chat)")
    ap.add_argument("--version", action="version", version="llmq_client " + __version__)
    ap.add_argument("--endpoint", default=None, help="broker frontend (env LLMQ_ENDPOINT)")
    ap.add_argument("--timeout", type=float, default=60.0, help="request timeout, s")
    ap.add_argument("--broker-timeout", type=float, default=None,
                    help="give up after this many s of broker silence (default "
                    "$LLMQ_GIVE_UP_MS or 30)")
    ap.add_argument("--curve-cert", default=None, help="own secret cert (env LLMQ_CURVE_CERT)")
    ap.add_argument("--broker-key", default=None,
                    help="broker public key or cert file (env LLMQ_BROKER_KEY)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping", help="ask the broker for its name and version")
    sub.add_parser("status", help="the broker's status as JSON")
    chat = sub.add_parser("chat", help="one chat request")
    chat.add_argument("model")
    chat.add_argument("prompt")
    chat.add_argument("--stream", action="store_true", help="print the text as it arrives")
    chat.add_argument("--max-tokens", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        with Client(args.endpoint, timeout=args.timeout, broker_timeout=args.broker_timeout,
                    curve_cert=args.curve_cert, broker_key=args.broker_key) as c:
            if args.cmd == "ping":
                p = c.ping()
                print("%s %s" % (p.broker, p.version))
            elif args.cmd == "status":
                print(json.dumps(c.status(), indent=2, default=str))
            else:
                params = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}
                if args.stream:
                    s = c.stream(args.model, args.prompt, **params)
                    for piece in s:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                    print()
                else:
                    print(c.chat(args.model, args.prompt, **params).text)
    except LlmqError as e:
        print("llmq_client: %s" % e, file=sys.stderr)
        return 1
    except ValueError as e:
        print("llmq_client: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

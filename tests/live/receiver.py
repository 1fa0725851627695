#!/usr/bin/env python3
"""pmta-sim's programmable SMTP receiver for the live tests, on aiosmtpd.

A picky mail host on loopback that a sending MTA's retry and backoff logic meets:

  --greylist SECS        450 4.2.0 to each new (client IP, sender, recipient) triplet until
                         SECS have passed since it was first seen (postgrey's reply style)
  --policy HOST:PORT     ask this Postfix policy server (a real postgrey) at each RCPT, as
                         Postfix's check_policy_service does: DEFER_IF_PERMIT/DEFER become
                         450 4.2.0 (Postfix's wording for a greylisted recipient), REJECT 550
  --fail-after N         after N accepted messages, answer MAIL with 421 4.7.0 and close ...
  --fail-for SECS        ... for SECS, then accept N more (0: for ever)
  --max-msgs-per-conn N  the (N+1)th MAIL on one connection gets 421 4.7.0 and a close
  --tls-cert/--tls-key   offer STARTTLS with this certificate (OpenSSL, through Python)
  --reject-prefix P      550 5.1.1 at RCPT for every local part that starts with P
  --log FILE             one line per accepted message: its X-Test-Id header and the time

The counters include the most connections open at once (max_open) and, with --log, the
log lets a test count messages per second as the receiver saw them.

Counters are written as JSON to --stats after every change. It listens only on loopback
and exits after --max-seconds. Stopped by its PID (SIGTERM).
"""
import argparse
import asyncio
import re
import json
import os
import signal
import ssl
import time

from aiosmtpd.smtp import SMTP


class Receiver:
    def __init__(self, args):
        self.args = args
        self.first_seen = {}
        self.accepted_since_window = 0
        self.failing_until = None
        self.counts = dict(connections=0, mail=0, greylisted=0, fail_after_421=0,
                           per_conn_421=0, accepted=0, accepted_rcpts=0, tls_sessions=0,
                           open=0, max_open=0, rejected_rcpts=0)

    def save(self):
        if self.args.stats:
            tmp = self.args.stats + ".tmp"
            with open(tmp, "w") as out:
                json.dump(self.counts, out, sort_keys=True)
            os.replace(tmp, self.args.stats)

    async def close_with(self, server, reply):
        # aiosmtpd does not close after a 421 by itself: say it, then hang up.
        await server.push(reply)
        server.transport.close()
        self.save()
        await asyncio.sleep(3600)

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.counts["mail"] += 1
        if session.ssl is not None and not getattr(session, "tls_counted", False):
            session.tls_counted = True
            self.counts["tls_sessions"] += 1
        a = self.args
        sent = getattr(session, "messages", 0)
        if a.max_msgs_per_conn and sent >= a.max_msgs_per_conn:
            self.counts["per_conn_421"] += 1
            return await self.close_with(server, "421 4.7.0 Too many messages in this session")
        now = time.monotonic()
        if self.failing_until is not None and now >= self.failing_until:
            self.failing_until, self.accepted_since_window = None, 0
        if a.fail_after and self.accepted_since_window >= a.fail_after:
            if self.failing_until is None and a.fail_for:
                self.failing_until = now + a.fail_for
            self.counts["fail_after_421"] += 1
            return await self.close_with(server, "421 4.7.0 Too many messages, try again later")
        envelope.mail_from = address
        self.save()
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        prefix = self.args.reject_prefix
        if prefix and address.lower().startswith(prefix.lower()):
            self.counts["rejected_rcpts"] += 1
            self.save()
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if self.args.greylist is not None:
            key = (session.peer[0], (envelope.mail_from or "").lower(), address.lower())
            now = time.time()
            first = self.first_seen.setdefault(key, now)
            if now - first < self.args.greylist:
                self.counts["greylisted"] += 1
                self.save()
                return f"450 4.2.0 <{address}>: Recipient address rejected: Greylisted"
        if self.args.policy:
            refusal = await self.ask_policy(session, envelope, address)
            if refusal:
                self.counts["greylisted"] += 1
                self.save()
                return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def ask_policy(self, session, envelope, address):
        """Postfix's policy delegation protocol (SMTPD_POLICY_README): attributes, an empty
        line; the answer is `action=...` and an empty line. A refusal's reply, or None."""
        host, _, port = self.args.policy.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = (
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            f"client_address={session.peer[0]}\nclient_name=unknown\n"
            f"helo_name={session.host_name or ''}\n"
            f"sender={envelope.mail_from or ''}\nrecipient={address}\n\n"
        )
        writer.write(request.encode())
        await writer.drain()
        answer = (await reader.readuntil(b"\n\n")).decode()
        writer.close()
        action = answer.split("action=", 1)[1].strip()
        verb, _, text = action.partition(" ")
        verb = verb.upper()
        if verb in ("DEFER_IF_PERMIT", "DEFER", "DEFER_IF_REJECT"):
            return f"450 4.2.0 <{address}>: Recipient address rejected: {text}"
        if verb == "REJECT" or re.fullmatch(r"5\d\d", verb):
            return f"550 5.7.1 <{address}>: Recipient address rejected: {text}"
        return None

    async def handle_DATA(self, server, session, envelope):
        self.counts["accepted"] += 1
        self.counts["accepted_rcpts"] += len(envelope.rcpt_tos)
        self.accepted_since_window += 1
        session.messages = getattr(session, "messages", 0) + 1
        if self.args.log:
            test_id = ""
            for line in envelope.content.split(b"\r\n"):
                if not line:
                    break
                if line.lower().startswith(b"x-test-id:"):
                    test_id = line.split(b":", 1)[1].strip().decode("ascii", "replace")
            with open(self.args.log, "a") as out:
                out.write(f"{test_id} {time.time():.3f}\n")
        self.save()
        return f"250 2.0.0 Ok: queued as r{self.counts['accepted']}"


class CountingSMTP(SMTP):
    receiver = None

    def connection_made(self, transport):
        # Called again for the same connection once STARTTLS has wrapped it.
        if not getattr(self, "counted", False):
            self.counted = True
            counts = self.receiver.counts
            counts["connections"] += 1
            counts["open"] += 1
            counts["max_open"] = max(counts["max_open"], counts["open"])
            self.receiver.save()
        super().connection_made(transport)

    def connection_lost(self, error):
        if getattr(self, "counted", False) and not getattr(self, "lost", False):
            self.lost = True
            self.receiver.counts["open"] -= 1
            self.receiver.save()
        super().connection_lost(error)


async def main(args):
    host, _, port = args.listen.rpartition(":")
    if not (host.startswith("127.") or host == "::1"):
        raise SystemExit(f"refusing to listen on non-loopback {host}")
    receiver = Receiver(args)
    CountingSMTP.receiver = receiver
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    def factory():
        return CountingSMTP(receiver, hostname="receiver.lab.test", ident="pmta-sim receiver",
                            tls_context=tls, require_starttls=False, timeout=60)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host=host, port=int(port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    receiver.save()
    print(f"listening on {host}:{port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True)
    p.add_argument("--greylist", type=float)
    p.add_argument("--policy")
    p.add_argument("--fail-after", type=int, default=0)
    p.add_argument("--fail-for", type=float, default=0.0)
    p.add_argument("--max-msgs-per-conn", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--stats")
    p.add_argument("--reject-prefix")
    p.add_argument("--log")
    p.add_argument("--max-seconds", type=float, default=600.0)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))

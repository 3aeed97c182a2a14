"""An IVR's side of careroute, for one inbound call: route it, then act on
the answer as an IVR script would.

- A reserved agent: warm-transfer the call, then ConfirmReservation (with a
  request_id, so a retry after a lost answer is answered as the first was),
  or ReleaseReservation if the transfer failed (--transfer-fails).
- A place in line: the in-queue announcement loop, GetContactStatus every
  --announce-every seconds ("you are number 2, about 3 minutes"), until the
  contact leaves the line (an agent took it, or a callback); --hang-up-after
  N announcements cancels it as a caller hanging up would.
- A callback ticket, the emergency script or "authenticate first": said.

Every step is printed as one JSON line, for a script or a test to read.

    pip install grpcio grpcio-tools
    python3 examples/clients/ivr.py --target localhost:50051 --contact c-1 --intent billing
"""

import argparse
import json
import sys
import time
import uuid

import grpc

import stubs

pb2, pb2_grpc = stubs.load()


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def seconds(duration):
    return duration.seconds + duration.nanos / 1e9


def call(method, request, attempts=3):
    """One call with the deadline an IVR should set (1 s), retried on
    UNAVAILABLE with the same request (safe: it carries a request_id)."""
    for attempt in range(attempts):
        try:
            return method(request, timeout=1.0)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                raise
            time.sleep(0.05 * 2**attempt)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--token", help="bearer token of a client with the route role")
    p.add_argument("--contact", required=True, help="the IVR's opaque call reference")
    p.add_argument("--intent", default="billing")
    p.add_argument("--urgency", default="routine", choices=["routine", "urgent", "emergency"])
    p.add_argument("--announce-every", type=float, default=30.0)
    p.add_argument("--max-announcements", type=int, default=40)
    p.add_argument("--hang-up-after", type=int, help="cancel after this many announcements")
    p.add_argument("--transfer-fails", action="store_true")
    args = p.parse_args()

    api = pb2_grpc.RoutingServiceStub(stubs.channel(args.target, args.token))
    request = pb2.RouteContactRequest(
        contact_id=args.contact,
        # One per contact and attempt of the script: a retry of this request
        # is answered from the first decision and reserves nothing new.
        request_id=str(uuid.uuid4()),
        channel=pb2.CHANNEL_VOICE,
        intent=args.intent,
        urgency=getattr(pb2, "URGENCY_" + args.urgency.upper()),
        identity=pb2.IDENTITY_VERIFIED,
    )
    try:
        decision = call(api.RouteContact, request)
    except grpc.RpcError as e:
        # The deadline passed or careroute is unreachable: the IVR's own
        # fallback route, never a caller left waiting on careroute.
        say("fallback", code=e.code().name, details=e.details())
        return 0
    outcome = decision.WhichOneof("outcome")
    say("routed", outcome=outcome, rule=decision.rule_id, level=decision.escalation_level,
        decision=decision.decision_id)

    if outcome == "agent":
        agent = decision.agent
        say("transfer", agent=agent.agent_id, address=agent.transfer_address)
        settle_id = str(uuid.uuid4())
        if args.transfer_fails:
            call(api.ReleaseReservation, pb2.ReleaseReservationRequest(
                reservation_id=agent.reservation_id,
                reason=pb2.RELEASE_REASON_TRANSFER_FAILED, request_id=settle_id))
            say("released", reservation=agent.reservation_id)
            return 0
        confirm = pb2.ConfirmReservationRequest(
            reservation_id=agent.reservation_id, request_id=settle_id)
        first = call(api.ConfirmReservation, confirm)
        # As if the answer had been lost: the same request again is
        # answered as the first was.
        again = call(api.ConfirmReservation, confirm)
        say("confirmed", agent=first.agent_id, contact=first.contact_id,
            retry_same=(first == again))
    elif outcome == "queued":
        q = decision.queued
        say("queued", queue=q.queue_id, position=q.position,
            estimated_wait_s=seconds(q.estimated_wait))
        for n in range(args.max_announcements):
            if args.hang_up_after is not None and n >= args.hang_up_after:
                call(api.CancelContact, pb2.CancelContactRequest(
                    contact_id=args.contact, request_id=str(uuid.uuid4())))
                say("hung_up")
                return 0
            time.sleep(args.announce_every)
            status = call(api.GetContactStatus,
                          pb2.GetContactStatusRequest(contact_id=args.contact))
            if status.WhichOneof("status") == "waiting":
                w = status.waiting
                minutes = max(1, round(seconds(w.estimated_wait) / 60))
                say("announce", position=w.position, estimated_wait_s=seconds(w.estimated_wait),
                    text=f"You are number {w.position} in line, about {minutes} minute(s).",
                    offered_to=w.offered_agent_id or None)
            else:
                hop = status.last
                say("left_line", outcome=hop.outcome, agent=hop.agent_id or None)
                return 0
        say("still_waiting")
    elif outcome == "callback":
        cb = decision.callback
        say("callback", queue=cb.queue_id, reason=pb2.CallbackReason.Name(cb.reason),
            deadline_local=cb.deadline_local)
    elif outcome == "emergency":
        say("emergency", script=decision.emergency.script_id)
    elif outcome == "authenticate":
        say("authenticate", script=decision.authenticate.script_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A CTI platform's side of careroute: register agents, feed their states,
and act on the offers careroute makes to waiting contacts.

- UpsertAgent for each agent (a billing profile here), then one
  StreamAgentStates call that sets them all available (a CTI's state feed).
- WatchAssignments for those agents: each offer is confirmed with
  ConfirmReservation (with a request_id, retried on UNAVAILABLE: a retry is
  answered as the first was); each callback is a ticket to open.
- With --complete-after S, each confirmed contact is completed S seconds
  later (CompleteContact), so the agent takes the next one.

Every step is printed as one JSON line. Ends after --offers offers.

    pip install grpcio grpcio-tools
    python3 examples/clients/cti.py --target localhost:50051 --agent a-1 --agent a-2
"""

import argparse
import json
import sys
import threading
import time
import uuid

import grpc

import stubs

pb2, pb2_grpc = stubs.load()


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def retried(method, request, attempts=4):
    """A settling call with its request_id: safe to send again."""
    for attempt in range(attempts):
        try:
            return method(request, timeout=2.0)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    or attempt + 1 == attempts:
                raise
            time.sleep(0.1 * 2**attempt)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--token", help="bearer token of a client with the cti role")
    p.add_argument("--agent", action="append", required=True, help="agent id (repeat)")
    p.add_argument("--offers", type=int, default=1, help="end after this many offers")
    p.add_argument("--complete-after", type=float, help="complete each contact after S seconds")
    args = p.parse_args()

    api = pb2_grpc.RoutingServiceStub(stubs.channel(args.target, args.token))
    for agent in args.agent:
        up = api.UpsertAgent(pb2.UpsertAgentRequest(
            agent_id=agent, team="Billing", transfer_address=f"sip:{agent}@pbx.example",
            skills=[pb2.SkillLevel(skill="billing", proficiency=3)], languages=["en"],
            channels=[pb2.ChannelCapacity(channel=pb2.CHANNEL_VOICE, capacity=1)]),
            timeout=2.0)
        say("registered", agent=agent, queues=list(up.eligible_queue_ids))
    # Watch first, then go available: an offer made as they log in is not
    # missed.
    watch = api.WatchAssignments(pb2.WatchAssignmentsRequest(agent_ids=args.agent))
    states = (pb2.StreamAgentStatesRequest(agent_id=a, state=pb2.AGENT_STATE_AVAILABLE)
              for a in args.agent)
    fed = api.StreamAgentStates(states, timeout=5.0)
    say("available", applied=fed.applied)

    offers = 0
    timers = []
    for event in watch:
        kind = event.WhichOneof("event")
        if kind == "agent":
            offer = event.agent
            confirm = pb2.ConfirmReservationRequest(
                reservation_id=offer.reservation_id, request_id=str(uuid.uuid4()))
            try:
                done = retried(api.ConfirmReservation, confirm)
            except grpc.RpcError as e:
                # Lapsed, or settled by another CTI instance: nothing to do.
                say("not_confirmed", contact=event.contact_id, code=e.code().name,
                    details=e.details())
                continue
            say("confirmed", contact=done.contact_id, agent=done.agent_id,
                resent=event.resent)
            if args.complete_after is not None:
                def complete(agent=done.agent_id, contact=done.contact_id):
                    retried(api.CompleteContact, pb2.CompleteContactRequest(
                        agent_id=agent, contact_id=contact, request_id=str(uuid.uuid4())))
                    say("completed", contact=contact, agent=agent)
                t = threading.Timer(args.complete_after, complete)
                t.start()
                timers.append(t)
            offers += 1
            if offers >= args.offers:
                break
        elif kind == "callback":
            cb = event.callback
            say("callback", contact=event.contact_id,
                reason=pb2.CallbackReason.Name(cb.reason), queue=cb.queue_id)
        elif kind == "withdrawn":
            say("withdrawn", contact=event.contact_id)
    for t in timers:
        t.join()
    watch.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/bin/sh
# An --rsh-agent that runs the command on this machine: `local_agent.sh HOST COMMAND...`
# drops HOST and execs COMMAND, as `ip netns exec NAME COMMAND...` does within its namespace.
shift
exec "$@"

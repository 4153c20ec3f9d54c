"""`rtmsim clients`: run real client programs against the simulated service and grade them.

`runner` starts the server, a token endpoint and N client processes (`run_clients` is
the command); `grading` reads what the clients did from the server's event log and
grades it against the code table's retry guidance (clients.json); `report` draws that
grade as client-report.html. The runner calls the other two; they do not know it.
"""

"""An mpi4py allreduce across the ranks of one distributed cell: proof that what batchmagic gives every
rank (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) is enough for a framework that is not PyTorch.

MPICH's processes need a process manager, and batchmagic starts the ranks itself: so each rank runs its
MPI part as a world of one (``mpiexec -n 1``), and the worlds join into one communicator with MPI's own
dynamic-process calls: rank 0 opens a port and hands its name out over a socket on MASTER_ADDR:MASTER_PORT;
the others connect in rank order and the merged communicator is ordered by RANK.
"""

from __future__ import annotations

__all__ = ["JOIN", "MPI_CELL"]

#: The MPI part: joins the ranks, allreduces RANK + 1, prints the sum.
JOIN = r"""
import os, socket, time
from mpi4py import MPI

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
comm = MPI.COMM_SELF
if rank == 0:
    name = MPI.Open_port()
    server = socket.create_server((addr, port))
    for _ in range(world - 1):  # each joiner asks for the port's name, then connects
        peer, _ = server.accept()
        peer.sendall(name.encode() + b"\n")
        peer.close()
        comm = comm.Accept(name).Merge(high=False)
else:
    for _ in range(600):
        try:
            sock = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.1)
    name = sock.makefile().readline().strip()  # rank 0 answers one joiner at a time
    comm = comm.Connect(name).Merge(high=True)
    while comm.Get_size() < world:
        comm = comm.Accept(None).Merge(high=False)
comm = comm.Split(0, rank)
print(comm.allreduce(rank + 1), flush=True)
"""

MPI_CELL = f"""
import os, subprocess, sys
mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
done = subprocess.run([mpiexec, "-n", "1", sys.executable, "-c", {JOIN!r}], capture_output=True, text=True)
print(done.stderr[-2000:], file=sys.stderr)
total = int(done.stdout.split()[-1])
print("allreduce", total)
"""

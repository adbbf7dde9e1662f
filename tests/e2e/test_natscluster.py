"""The nats-server helpers that the edge-cluster tests stand on, proven with nats-servers alone (no
jetsonmind): a real JetStream cluster keeps a meta leader when its leader is killed and takes the
server back on restart; in network namespaces, a host cut off the switch loses its routes while the
other two keep a quorum and elect a new meta leader (the cut one, the old leader, only steps down some
15 s later when raft notices its lost quorum: not waited for), and it rejoins once healed; nothing is left behind."""

import subprocess
from pathlib import Path

from natscluster import NatsCluster, Netns, NotYet


def others(cluster, i):
    return [j for j in range(len(cluster.servers)) if j != i]


def routes_only_to(cluster, i, expected):
    """A check: server i's routes go to exactly the servers named in `expected`."""
    return lambda: cluster.route_peers(i) == expected or NotYet(cluster.state(i))


def test_cluster_keeps_a_leader_when_its_leader_is_killed_and_takes_it_back(nats_cluster):
    cluster = nats_cluster
    assert len(cluster.urls.split(",")) == 3
    leader = cluster.wait_ready()
    killed = cluster.index_of(leader)
    rest = others(cluster, killed)

    cluster.kill(killed)
    assert cluster.wait_ready(rest) != leader
    for i in rest:
        remaining = {cluster.names[j] for j in rest if j != i}
        cluster.wait_for(routes_only_to(cluster, i, remaining), f"{cluster.names[i]} drops its routes to {leader}")

    cluster.restart(killed)
    cluster.wait_ready()
    assert cluster.route_peers(killed) == {cluster.names[j] for j in rest}


def test_a_cut_host_loses_its_routes_the_rest_elect_a_leader_and_it_rejoins_when_healed(netns, nats_cluster_netns):
    cluster = nats_cluster_netns
    root_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f"{netns.subnet}." not in root_addresses, "the hosts' addresses leaked into the root namespace"
    leader = cluster.wait_ready()
    cut = cluster.index_of(leader)

    netns.cut(cut)
    assert cluster.wait_ready(others(cluster, cut)) != leader
    cluster.wait_for(routes_only_to(cluster, cut, set()), f"the cut {leader} has no routes")

    netns.heal(cut)
    cluster.wait_ready()


def test_everything_is_torn_down(tmp_path):
    with Netns(count=2) as hosts:
        with NatsCluster(tmp_path, n=2, netns=hosts) as cluster:
            processes = [server.process for server in cluster.servers]
            assert all(process.poll() is None for process in processes)
        assert all(process.poll() is not None for process in processes)
        namespaces = [hosts.switch, *hosts.hosts]
        assert all(Path("/run/netns", name).exists() for name in namespaces)
    assert not any(Path("/run/netns", name).exists() for name in namespaces)

"""The stack's network: private subnets over two AZs, no public IPs on tasks, the endpoints, each
security group's ingress exactly from its callers, flow logs."""

from __future__ import annotations

from collections import defaultdict

from tests.deploy.cfn_template import Synthesized, listed, ref, resolve

GROUPS = {  # security group descriptions (network.py) -> short names used below
    "internal ALB of the Dagster UI": "alb",
    "Dagster webserver tasks": "webserver",
    "Dagster daemon task": "daemon",
    "Dagster code location gRPC servers": "code",
    "Dagster run tasks (shard workers, loads, indexing, scaling)": "run",
    "Dagster instance storage (RDS PostgreSQL)": "dagster_db",
    "Redshift warehouse": "redshift",
    "OpenSearch domain": "opensearch",
    "interface VPC endpoints": "endpoints",
    "MSK Serverless cluster": "msk",
}
INTERFACE_SERVICES = {
    "kinesis-streams",
    "monitoring",
    "logs",
    "sts",
    "secretsmanager",
    "kms",
    "ecr.api",
    "ecr.dkr",
    "ecs",
    "ec2",
    "xray",
    "sns",
}


def group_ids(s: Synthesized) -> dict[str, str]:
    """Short name -> logical id of each security group."""
    found = {GROUPS[r["Properties"]["GroupDescription"]]: k for k, r in s.of_type("AWS::EC2::SecurityGroup").items()}
    assert set(found) == set(GROUPS.values()), f"security groups: {sorted(found)}"
    return found


def ingress(s: Synthesized) -> dict[str, set[tuple[str, int, int]]]:
    """Group name -> {(source group name or CIDR, from port, to port)}, inline and separate rules."""
    names = {v: k for k, v in group_ids(s).items()}
    rules: dict[str, set[tuple[str, int, int]]] = defaultdict(set)

    def source(rule: dict) -> str:
        if "SourceSecurityGroupId" in rule:
            return names[rule["SourceSecurityGroupId"]["Fn::GetAtt"][0]]
        return resolve(rule["CidrIp"])

    for logical_id, resource in s.of_type("AWS::EC2::SecurityGroup").items():
        for rule in resource["Properties"].get("SecurityGroupIngress", []):
            rules[names[logical_id]].add((source(rule), rule["FromPort"], rule["ToPort"]))
    for resource in s.of_type("AWS::EC2::SecurityGroupIngress").values():
        props = resource["Properties"]
        rules[names[props["GroupId"]["Fn::GetAtt"][0]]].add((source(props), props["FromPort"], props["ToPort"]))
    return rules


def test_private_subnets_over_two_azs_and_no_public_ips(synthesized: Synthesized):
    s = synthesized
    subnets = s.of_type("AWS::EC2::Subnet")
    private = {k for k, r in subnets.items() if any(t["Value"] == "Private" for t in r["Properties"]["Tags"])}
    public = set(subnets) - private
    assert len(private) == 2 and len(public) == 2
    azs = {resolve(subnets[k]["Properties"]["AvailabilityZone"]) for k in private}
    assert len(azs) == 2  # one per AZ (Fn::GetAZs picks, the stack being environment-agnostic)
    assert all(subnets[k]["Properties"]["MapPublicIpOnLaunch"] is False for k in subnets)
    # The NAT gateways (egress for public.ecr.aws and the webhook) are the only things in public subnets.
    nats = s.of_type("AWS::EC2::NatGateway")
    assert len(nats) == s.settings.nat_gateways
    assert {n["Properties"]["SubnetId"]["Ref"] for n in nats.values()} <= public
    private_refs = [{"Ref": k} for k in sorted(private)]
    for service in s.of_type("AWS::ECS::Service").values():
        vpc = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert vpc["AssignPublicIp"] == "DISABLED"
        assert sorted(vpc["Subnets"], key=str) == private_refs
    _, alb = s.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert alb["Properties"]["Scheme"] == "internal"
    assert sorted(alb["Properties"]["Subnets"], key=str) == private_refs


def test_gateway_and_interface_endpoints(synthesized: Synthesized):
    s = synthesized
    endpoints = s.of_type("AWS::EC2::VPCEndpoint").values()
    by_type = defaultdict(set)
    for endpoint in endpoints:
        props = endpoint["Properties"]
        name = resolve(props["ServiceName"]).removeprefix("com.amazonaws.${AWS::Region}.")
        by_type[props["VpcEndpointType"]].add(name)
        if props["VpcEndpointType"] == "Interface":
            assert props["PrivateDnsEnabled"] is True
            assert props["SecurityGroupIds"] == [{"Fn::GetAtt": [group_ids(s)["endpoints"], "GroupId"]}]
            assert len(props["SubnetIds"]) == 2
        else:
            assert len(props["RouteTableIds"]) == 2  # the private subnets' route tables
    assert by_type["Gateway"] == {"s3", "dynamodb"}
    assert by_type["Interface"] == INTERFACE_SERVICES


def test_each_group_admits_only_its_callers(synthesized: Synthesized):
    s = synthesized
    ui = s.settings.ui_cidr or s.settings.vpc_cidr
    tasks = ("webserver", "daemon", "code", "run")
    expected = {
        "alb": {(ui, 80, 80)},  # no certificate in the default context: HTTP inside the VPC
        "webserver": {("alb", 3000, 3000)},
        "code": {("webserver", 4000, 4000), ("daemon", 4000, 4000)},
        "dagster_db": {(t, 5432, 5432) for t in tasks},
        "endpoints": {(t, 443, 443) for t in tasks},
        "redshift": {("run", 5439, 5439)},
        "opensearch": {("run", 443, 443), ("code", 443, 443)},
        "msk": {("run", 9098, 9098), ("code", 9098, 9098)},
    }
    assert dict(ingress(s)) == expected  # daemon and run: no ingress at all

    ids = group_ids(s)
    # Stores and endpoints send nothing (CDK's placeholder rule that matches no traffic).
    for name in ("alb", "dagster_db", "redshift", "opensearch", "endpoints", "msk"):
        egress = s.props(ids[name]).get("SecurityGroupEgress", [])
        assert all(rule.get("CidrIp") == "255.255.255.255/32" for rule in egress), name
    # Which group each component carries.
    sg = lambda name: {"Fn::GetAtt": [ids[name], "GroupId"]}  # noqa: E731
    services = {
        r["Properties"]["ServiceName"].removeprefix(f"{s.settings.prefix}-"): r["Properties"]["NetworkConfiguration"][
            "AwsvpcConfiguration"
        ]["SecurityGroups"]
        for r in s.of_type("AWS::ECS::Service").values()
    }
    assert services.pop("webserver") == [sg("webserver")]
    # Runs get the daemon's network (use_current_ecs_task_config): the daemon carries the run group.
    assert services.pop("daemon") == [sg("daemon"), sg("run")]
    assert services and all(groups == [sg("code")] for name, groups in services.items() if name.startswith("code-"))
    assert s.one("AWS::RDS::DBInstance")[1]["Properties"]["VPCSecurityGroups"] == [sg("dagster_db")]
    assert s.one("AWS::Redshift::Cluster")[1]["Properties"]["VpcSecurityGroupIds"] == [sg("redshift")]
    domain = s.one("AWS::OpenSearchService::Domain")[1]["Properties"]
    assert domain["VPCOptions"]["SecurityGroupIds"] == [sg("opensearch")]
    kafka = s.one("AWS::MSK::ServerlessCluster")[1]["Properties"]
    assert kafka["VpcConfigs"][0]["SecurityGroups"] == [sg("msk")]
    assert s.one("AWS::ElasticLoadBalancingV2::LoadBalancer")[1]["Properties"]["SecurityGroups"] == [sg("alb")]


def test_flow_logs_go_to_a_log_group_with_retention(synthesized: Synthesized):
    s = synthesized
    _, flow = s.one("AWS::EC2::FlowLog")
    props = flow["Properties"]
    assert props["ResourceType"] == "VPC" and props["TrafficType"] == "ALL"
    assert props["ResourceId"] == {"Ref": s.one("AWS::EC2::VPC")[0]}
    assert props["LogDestinationType"] == "cloud-watch-logs"
    group = s.resources[props["LogGroupName"]["Ref"]]
    assert group["Properties"]["RetentionInDays"] == s.settings.log_retention_days


def test_the_helpers_see_what_they_claim():
    """`resolve` and `listed` on a known structure (the network tests read the template through them)."""
    joined = {"Fn::Join": ["", ["arn:aws:s3:::", {"Ref": "Bucket"}, "/raw/*"]]}
    assert resolve(joined) == "arn:aws:s3:::${Bucket}/raw/*" == f"arn:aws:s3:::{ref('Bucket')}/raw/*"
    assert resolve({"Fn::GetAtt": ["Topic", "TopicName"]}) == "${Topic.TopicName}"
    assert resolve({"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "C"}]}]}) == "${select(2,split(/,${C}))}"
    assert listed("a") == ["a"] and listed(["a"]) == ["a"]

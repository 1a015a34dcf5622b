"""JSON Schemas of the custom resources the charts render: Strimzi's Kafka and KafkaNodePool
(kafka.strimzi.io/v1beta2, as deployed) and KafkaTopic and KafkaUser (kafka.strimzi.io/v1, to
which Phalanx moved them: v1beta2 goes away with Strimzi 0.52), the Vault Secrets Operator's
VaultSecret (ricoberger.de/v1alpha1), which Phalanx uses for every secret, the Prometheus
operator's PodMonitor and PrometheusRule (monitoring.coreos.com/v1), cert-manager's
Certificate (cert-manager.io/v1), and the Strimzi access operator's KafkaAccess
(access.strimzi.io/v1alpha1), with which the services reach Sasquatch's Kafka.

Why hand-written: the operators' CRDs (which carry the authoritative OpenAPI schemas) are
published in their source repositories and Maven/OCI/Helm artifacts, none of which is reachable
from here (only crates.io, PyPI, npm and Debian are), and no package on those registries carries
them. These schemas are written from Strimzi's documented API reference (v1beta2 and v1) and the operator's
documentation, and cover the fields our charts use, strictly: `additionalProperties: false` on
every object whose fields are all known, so a misspelt or misplaced field fails the check. A field
the charts start using must be added here, from the API reference. The enums and bounds are
Strimzi's. Free-form maps (broker and topic config, annotations, resources, affinity) are
checked by type only, except the few keys whose values Kubernetes itself bounds.
"""

from __future__ import annotations

STRING = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
MAP = {"type": "object"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def obj(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": STRING,
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "required": ["name"],
}

CLUSTER_LABELLED = {
    **METADATA,
    "required": ["name", "labels"],
    "properties": {
        **METADATA["properties"],
        "labels": {**STRING_MAP, "required": ["strimzi.io/cluster"]},
    },
}

RESOURCES = obj({"requests": MAP, "limits": MAP})

SECRET_KEY_REF = obj({"name": STRING, "key": STRING}, ["name", "key"])

AUTHENTICATION = obj(
    {"type": {"enum": ["tls", "scram-sha-512", "oauth", "custom"]}},
    ["type"],
)

LISTENER = obj(
    {
        "name": {"type": "string", "pattern": r"^[a-z0-9]{1,11}$"},
        "port": {"type": "integer", "minimum": 9092},
        "type": {"enum": ["internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"]},
        "tls": BOOL,
        "authentication": AUTHENTICATION,
        "configuration": obj(
            {
                "allocateLoadBalancerNodePorts": BOOL,
                "brokerCertChainAndKey": obj(
                    {"secretName": STRING, "certificate": STRING, "key": STRING},
                    ["secretName", "certificate", "key"],
                ),
                "bootstrap": obj(
                    {
                        "loadBalancerIP": STRING,
                        "annotations": STRING_MAP,
                        "labels": STRING_MAP,
                        "host": STRING,
                        "alternativeNames": {"type": "array", "items": STRING},
                    }
                ),
                "brokers": {
                    "type": "array",
                    "items": obj(
                        {
                            "broker": INT,
                            "loadBalancerIP": STRING,
                            "advertisedHost": STRING,
                            "advertisedPort": INT,
                            "host": STRING,
                            "annotations": STRING_MAP,
                            "labels": STRING_MAP,
                        },
                        ["broker"],
                    ),
                },
            }
        ),
    },
    ["name", "port", "type", "tls"],
)

PVC_TEMPLATE = obj({"metadata": obj({"labels": STRING_MAP, "annotations": STRING_MAP})})

POD_TEMPLATE = obj(
    {
        "metadata": obj({"labels": STRING_MAP, "annotations": STRING_MAP}),
        "affinity": MAP,
        "tolerations": {"type": "array", "items": MAP},
    }
)

ENV = {
    "type": "array",
    "items": obj({"name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}, "value": STRING}, ["name"]),
}

VOLUME = obj(
    {
        "id": {"type": "integer", "minimum": 0},
        "type": {"enum": ["ephemeral", "persistent-claim"]},
        "size": {"type": "string", "pattern": r"^[0-9]+([KMGTPE]i?)?$"},
        "class": STRING,
        "deleteClaim": BOOL,
        "kraftMetadata": {"enum": ["shared"]},
    },
    ["type"],
)

JBOD = obj(
    {
        "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
        "volumes": {"type": "array", "minItems": 1, "items": VOLUME},
        "size": STRING,
        "class": STRING,
        "deleteClaim": BOOL,
    },
    ["type"],
)

KAFKA = obj(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "Kafka"},
        "metadata": METADATA,
        "spec": obj(
            {
                "kafka": obj(
                    {
                        "template": obj({"persistentVolumeClaim": PVC_TEMPLATE, "pod": POD_TEMPLATE}),
                        "replicas": {"type": "integer", "minimum": 1},
                        "storage": JBOD,
                        "metricsConfig": obj(
                            {
                                "type": {"const": "jmxPrometheusExporter"},
                                "valueFrom": obj(
                                    {"configMapKeyRef": SECRET_KEY_REF}, ["configMapKeyRef"]
                                ),
                            },
                            ["type", "valueFrom"],
                        ),
                        "version": STRING,
                        "metadataVersion": STRING,
                        "listeners": {"type": "array", "minItems": 1, "items": LISTENER},
                        "authorization": obj(
                            {
                                "type": {"enum": ["simple", "opa", "keycloak", "custom"]},
                                "superUsers": {"type": "array", "items": STRING},
                            },
                            ["type"],
                        ),
                        "config": {
                            "type": "object",
                            "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
                        },
                        "resources": RESOURCES,
                    },
                    ["listeners"],
                ),
                "entityOperator": obj(
                    {
                        "topicOperator": MAP,
                        "userOperator": MAP,
                        "template": obj(
                            {
                                "topicOperatorContainer": obj({"env": ENV}),
                                "userOperatorContainer": obj({"env": ENV}),
                            }
                        ),
                    }
                ),
                "kafkaExporter": obj(
                    {
                        "topicRegex": STRING,
                        "groupRegex": STRING,
                        "logging": {"enum": ["info", "debug", "trace", "warn", "error", "fatal"]},
                        "enableSaramaLogging": BOOL,
                        "resources": RESOURCES,
                        "template": obj({"pod": POD_TEMPLATE}),
                    }
                ),
                "cruiseControl": MAP,
            },
            ["kafka"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

KAFKA_NODE_POOL = obj(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
        "kind": {"const": "KafkaNodePool"},
        "metadata": CLUSTER_LABELLED,
        "spec": obj(
            {
                "replicas": {"type": "integer", "minimum": 0},
                "roles": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": ["controller", "broker"]},
                },
                "storage": JBOD,
                "resources": RESOURCES,
                "template": obj({"pod": POD_TEMPLATE, "persistentVolumeClaim": PVC_TEMPLATE}),
            },
            ["replicas", "roles", "storage"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

KAFKA_TOPIC = obj(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1"},
        "kind": {"const": "KafkaTopic"},
        "metadata": CLUSTER_LABELLED,
        "spec": obj(
            {
                "topicName": STRING,
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {
                    "type": "object",
                    "properties": {"retention.ms": {"type": "integer", "minimum": -1}},
                    "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
                },
            },
            ["partitions", "replicas"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

ACL_OPERATIONS = [
    "Read",
    "Write",
    "Create",
    "Delete",
    "Alter",
    "Describe",
    "ClusterAction",
    "AlterConfigs",
    "DescribeConfigs",
    "IdempotentWrite",
    "All",
]

KAFKA_USER = obj(
    {
        "apiVersion": {"const": "kafka.strimzi.io/v1"},
        "kind": {"const": "KafkaUser"},
        "metadata": CLUSTER_LABELLED,
        "spec": obj(
            {
                "authentication": obj(
                    {
                        "type": {"enum": ["tls", "tls-external", "scram-sha-512"]},
                        "password": obj(
                            {"valueFrom": obj({"secretKeyRef": SECRET_KEY_REF}, ["secretKeyRef"])},
                            ["valueFrom"],
                        ),
                    },
                    ["type"],
                ),
                "authorization": obj(
                    {
                        "type": {"const": "simple"},
                        "acls": {
                            "type": "array",
                            "items": obj(
                                {
                                    "resource": obj(
                                        {
                                            "type": {"enum": ["topic", "group", "cluster", "transactionalId"]},
                                            "name": STRING,
                                            "patternType": {"enum": ["literal", "prefix"]},
                                        },
                                        ["type"],
                                    ),
                                    "type": {"enum": ["allow", "deny"]},
                                    "host": STRING,
                                    "operations": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"enum": ACL_OPERATIONS},
                                    },
                                },
                                ["resource", "operations"],
                            ),
                        },
                    },
                    ["type", "acls"],
                ),
            }
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

VAULT_SECRET = obj(
    {
        "apiVersion": {"const": "ricoberger.de/v1alpha1"},
        "kind": {"const": "VaultSecret"},
        "metadata": METADATA,
        "spec": obj(
            {
                # Phalanx's paths are `<vaultSecretsPath>/<application>`: an empty
                # vaultSecretsPath would leave a leading slash.
                "path": {"type": "string", "pattern": r"^[^/].*[^/]$"},
                "type": {"type": "string", "minLength": 1},
                "keys": {"type": "array", "items": STRING},
                "templates": STRING_MAP,
                "version": INT,
                "isBinary": BOOL,
            },
            ["path", "type"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}

# Written from the Prometheus operator's API reference (monitoring.coreos.com/v1).
PROMETHEUS_RULE = obj(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": obj(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "items": obj(
                                    {
                                        "alert": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                        "record": STRING,
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": {"type": "object", "propertyNames": LABEL_NAME,
                                                   "additionalProperties": STRING},
                                        "annotations": {"type": "object", "propertyNames": LABEL_NAME,
                                                        "additionalProperties": STRING},
                                    },
                                    ["expr"],
                                ),
                            },
                        },
                        ["name", "rules"],
                    ),
                }
            },
            ["groups"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

POD_MONITOR = obj(
    {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": METADATA,
        "spec": obj(
            {
                "selector": obj({"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}}),
                "namespaceSelector": obj({"any": BOOL, "matchNames": {"type": "array", "items": STRING}}),
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": obj(
                        {"port": STRING, "path": STRING, "interval": DURATION, "scheme": {"enum": ["http", "https"]}}
                    ),
                },
            },
            ["selector"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

# cert-manager.io/v1, for the external listener's certificate.
CERTIFICATE = obj(
    {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": METADATA,
        "spec": obj(
            {
                "secretName": STRING,
                "issuerRef": obj({"name": STRING, "kind": STRING, "group": STRING}, ["name"]),
                "dnsNames": {"type": "array", "minItems": 1, "items": STRING},
            },
            ["secretName", "issuerRef"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

# The Strimzi access operator's KafkaAccess (access.strimzi.io/v1alpha1), as the CRD Phalanx
# installs with its strimzi-access-operator application defines it: the access operator writes a
# Secret of the same name with the connection details (check.py, KAFKA_ACCESS_KEYS).
KAFKA_ACCESS = obj(
    {
        "apiVersion": {"const": "access.strimzi.io/v1alpha1"},
        "kind": {"const": "KafkaAccess"},
        "metadata": METADATA,
        "spec": obj(
            {
                "kafka": obj({"name": STRING, "namespace": STRING, "listener": STRING}, ["name"]),
                "user": obj(
                    {
                        "kind": {"const": "KafkaUser"},
                        "apiGroup": {"const": "kafka.strimzi.io"},
                        "name": STRING,
                        "namespace": STRING,
                    },
                    ["kind", "apiGroup", "name"],
                ),
            },
            ["kafka"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)

SCHEMAS = {
    ("kafka.strimzi.io/v1beta2", "Kafka"): KAFKA,
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): KAFKA_NODE_POOL,
    ("kafka.strimzi.io/v1", "KafkaTopic"): KAFKA_TOPIC,
    ("kafka.strimzi.io/v1", "KafkaUser"): KAFKA_USER,
    ("ricoberger.de/v1alpha1", "VaultSecret"): VAULT_SECRET,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("access.strimzi.io/v1alpha1", "KafkaAccess"): KAFKA_ACCESS,
}

//! The things' accounts in Mosquitto's dynamic-security plugin (D-61): one client per thing
//! (user name = client identifier = thingId, its secret, its enabled flag) and one role per
//! thing whose ACLs are S-2.1's allow-list as written by [`iothub_spec::topic::grants`].
//!
//! Commands are JSON on `$CONTROL/dynamic-security/v1`; Mosquitto answers on `.../response`,
//! to the sending connection only, one entry per command in order, echoing `correlationData`.
//! Everything here is the pure part (command documents, the reconciliation plan); the
//! connection that carries them is the parent module's `Control`.

use std::collections::{HashMap, HashSet};

use iothub_spec::topic::grants::{Access, grants};
use serde_json::{Value, json};

/// Where commands go.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where their answers come back.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// Prefix of the role the hub keeps for each thing; a client holding `{prefix}{its name}` is the
/// hub's to manage, every other client and role is left alone.
pub const ROLE_PREFIX: &str = "iothub-thing-";

/// The role name of `thing`.
pub fn role_name(thing: &str) -> String {
    format!("{ROLE_PREFIX}{thing}")
}

/// `createRole` with S-2.1's allow-list of `thing` as ACLs; `None` for an id that is not one of
/// S-1.1 (the registry never holds such a thing).
pub fn create_role(thing: &str) -> Option<Value> {
    let acls: Vec<Value> = grants(thing)
        .ok()?
        .iter()
        .filter_map(|g| {
            let acltype = match g.access {
                Access::Publish => "publishClientSend",
                Access::Subscribe => "subscribePattern",
                _ => return None,
            };
            Some(json!({ "acltype": acltype, "topic": g.pattern.as_str(), "allow": true }))
        })
        .collect();
    Some(json!({ "command": "createRole", "rolename": role_name(thing), "acls": acls }))
}

/// `createClient` for `thing`: its client identifier is bound to the user name, so a CONNECT
/// with another identifier is refused (S-1.2). Without `password` the client cannot log in.
pub fn create_client(thing: &str, password: Option<&str>) -> Value {
    let mut command = json!({
        "command": "createClient",
        "username": thing,
        "clientid": thing,
        "roles": [{ "rolename": role_name(thing) }],
    });
    if let (Some(password), Some(map)) = (password, command.as_object_mut()) {
        map.insert("password".into(), Value::from(password));
    }
    command
}

/// `enableClient` / `disableClient` (disabling also closes its connections).
pub fn set_enabled(thing: &str, enabled: bool) -> Value {
    let command = if enabled {
        "enableClient"
    } else {
        "disableClient"
    };
    json!({ "command": command, "username": thing })
}

/// `deleteClient` (closes its connections).
pub fn delete_client(thing: &str) -> Value {
    json!({ "command": "deleteClient", "username": thing })
}

/// `deleteRole` of `thing`'s role.
pub fn delete_role(thing: &str) -> Value {
    json!({ "command": "deleteRole", "rolename": role_name(thing) })
}

/// Whether a command's answer is a success, or an error that leaves the wanted state anyway
/// (deleting what is already gone).
pub fn succeeded(command: &Value, answer: &Value) -> bool {
    let Some(error) = answer.get("error").and_then(Value::as_str) else {
        return true;
    };
    let name = command.get("command").and_then(Value::as_str).unwrap_or("");
    name.starts_with("delete") && error.ends_with("not found")
}

/// A client as `listClients` (verbose) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerClient {
    /// Its user name.
    pub username: String,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Whether it holds the hub's role for its name (the hub manages it).
    pub managed: bool,
}

/// Reads one page of a verbose `listClients` answer: the clients and the total count.
pub fn parse_clients(answer: &Value) -> Option<(u64, Vec<BrokerClient>)> {
    let data = answer.get("data")?;
    let total = data.get("totalCount")?.as_u64()?;
    let clients = data
        .get("clients")?
        .as_array()?
        .iter()
        .filter_map(|c| {
            let username = c.get("username")?.as_str()?.to_owned();
            let own = role_name(&username);
            let managed = c
                .get("roles")
                .and_then(Value::as_array)
                .is_some_and(|roles| {
                    roles
                        .iter()
                        .any(|r| r.get("rolename").and_then(Value::as_str) == Some(&own))
                });
            let disabled = c.get("disabled").and_then(Value::as_bool).unwrap_or(false);
            Some(BrokerClient {
                username,
                disabled,
                managed,
            })
        })
        .collect();
    Some((total, clients))
}

/// Reads one page of a `listRoles` answer: the role names and the total count.
pub fn parse_roles(answer: &Value) -> Option<(u64, Vec<String>)> {
    let data = answer.get("data")?;
    let total = data.get("totalCount")?.as_u64()?;
    let roles = data
        .get("roles")?
        .as_array()?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    Some((total, roles))
}

/// What start-up reconciliation found and will send.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Commands that make the broker follow the registry, in order.
    pub commands: Vec<Value>,
    /// Things of the registry that had no account; they get one without a secret, so they
    /// cannot connect until they get a new one (the hub keeps only a hash of each secret).
    pub without_secret: Vec<String>,
    /// Clients named like a thing of the registry that the hub does not manage; left alone.
    pub foreign: Vec<String>,
}

/// Compares the registry (`thing id → enabled`) with the broker's clients and roles and plans
/// the commands that make the broker follow the registry: accounts of deleted things removed
/// (with roles left without a client), missing accounts created, enabled flags copied.
pub fn plan(
    registry: &HashMap<String, bool>,
    clients: &[BrokerClient],
    roles: &HashSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    let mut present = HashSet::new();
    for client in clients {
        present.insert(client.username.as_str());
        match registry.get(&client.username) {
            None if client.managed => {
                plan.commands.push(delete_client(&client.username));
                plan.commands.push(delete_role(&client.username));
            }
            None => {}
            Some(_) if !client.managed => plan.foreign.push(client.username.clone()),
            Some(&enabled) if enabled == client.disabled => {
                plan.commands.push(set_enabled(&client.username, enabled));
            }
            Some(_) => {}
        }
    }
    for role in roles {
        if let Some(thing) = role.strip_prefix(ROLE_PREFIX)
            && !present.contains(thing)
            && !registry.contains_key(thing)
        {
            plan.commands.push(delete_role(thing));
        }
    }
    let mut missing: Vec<(&String, &bool)> = registry
        .iter()
        .filter(|(id, _)| !present.contains(id.as_str()))
        .collect();
    missing.sort();
    for (thing, &enabled) in missing {
        let Some(role) = create_role(thing) else {
            continue;
        };
        if !roles.contains(&role_name(thing)) {
            plan.commands.push(role);
        }
        plan.commands.push(create_client(thing, None));
        if !enabled {
            plan.commands.push(set_enabled(thing, false));
        }
        plan.without_secret.push(thing.clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, disabled: bool, managed: bool) -> BrokerClient {
        BrokerClient {
            username: name.into(),
            disabled,
            managed,
        }
    }

    fn names(plan: &Plan) -> Vec<String> {
        plan.commands
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["command"].as_str().expect("command"),
                    c.get("username")
                        .or(c.get("rolename"))
                        .and_then(Value::as_str)
                        .expect("name")
                )
            })
            .collect()
    }

    #[test]
    fn roles_carry_the_spec_grants_and_nothing_wider() {
        let role = create_role("t1").expect("valid id");
        let acls = role["acls"].as_array().expect("acls");
        assert_eq!(acls.len(), 10);
        for acl in acls {
            let topic = acl["topic"].as_str().expect("topic");
            assert!(
                topic.starts_with("$iothub/things/t1/")
                    || topic.starts_with("$iothub/user/things/t1/"),
                "{topic}"
            );
        }
        assert!(create_role("bad/id").is_none());
    }

    #[test]
    fn the_plan_follows_the_registry_and_leaves_foreign_accounts_alone() {
        let registry: HashMap<String, bool> = [
            ("ok".to_string(), true),
            ("off".to_string(), false),
            ("new".to_string(), true),
            ("admin".to_string(), true),
        ]
        .into();
        let clients = [
            client("ok", false, true),
            client("off", false, true),
            client("gone", false, true),
            client("admin", false, false),
            client("$hub", false, false),
        ];
        let roles: HashSet<String> = ["iothub-thing-ok", "iothub-thing-orphan", "admin"]
            .map(String::from)
            .into();
        let plan = plan(&registry, &clients, &roles);
        let mut got = names(&plan);
        got.sort();
        assert_eq!(
            got,
            [
                "createClient new",
                "createRole iothub-thing-new",
                "deleteClient gone",
                "deleteRole iothub-thing-gone",
                "deleteRole iothub-thing-orphan",
                "disableClient off",
            ]
        );
        assert_eq!(plan.without_secret, ["new"]);
        assert_eq!(plan.foreign, ["admin"]);
    }

    #[test]
    fn deleting_what_is_gone_counts_as_done() {
        let delete = delete_client("x");
        assert!(succeeded(&delete, &json!({"error": "Client not found"})));
        assert!(!succeeded(
            &create_client("x", Some("s")),
            &json!({"error": "Client already exists"})
        ));
        assert!(succeeded(
            &set_enabled("x", true),
            &json!({"command": "enableClient"})
        ));
    }

    #[test]
    fn listings_parse() {
        let answer = json!({"command":"listClients","data":{"totalCount":5,"clients":[
            {"username":"t2","disabled":true,"roles":[],"groups":[]},
            {"username":"t3","clientid":"t3","roles":[{"rolename":"iothub-thing-t3"}],"groups":[]}]}});
        let (total, clients) = parse_clients(&answer).expect("clients");
        assert_eq!(total, 5);
        assert_eq!(
            clients,
            [client("t2", true, false), client("t3", false, true)]
        );
        let roles = json!({"command":"listRoles","data":{"totalCount":2,"roles":["admin","x"]}});
        assert_eq!(
            parse_roles(&roles),
            Some((2, vec!["admin".into(), "x".into()]))
        );
    }
}

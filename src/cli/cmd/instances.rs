//! `syncpool instances add|import|list|remove`: the instance registry. Every check of an
//! instance or of an import file needs no database and runs before one is opened.

use crate::cli::{AddArgs, CliError, InstancesCmd, Out, print_json, printable};
use crate::model::NewInstance;
use crate::store::Store;
use crate::text::plural;
use crate::validate;

/// `syncpool instances ...`.
pub(crate) async fn run(store: &dyn Store, cmd: InstancesCmd) -> Out {
    match cmd {
        InstancesCmd::Add(args) => add(store, &args).await,
        InstancesCmd::Import { file } => import(store, &file).await,
        InstancesCmd::List { json } => list(store, json).await,
        InstancesCmd::Remove { name } => remove(store, &name).await,
    }
}

async fn add(store: &dyn Store, args: &AddArgs) -> Out {
    let json = args.json;
    let new = new_instance_from_args(args)?;
    let inst = store.instance_insert(&new).await?;
    if json {
        print_json(&inst);
    } else {
        println!(
            "registered {} ({}, id {})",
            printable(&inst.name),
            printable(inst.kind.as_str()),
            inst.id
        );
    }
    Ok(())
}

async fn import(store: &dyn Store, file: &std::path::Path) -> Out {
    let valid = read_import(file)?;
    let n = store.instance_insert_many(&valid).await?;
    println!(
        "registered {} from {}",
        plural(n as i64, "instance"),
        printable(&file.display().to_string())
    );
    Ok(())
}

async fn list(store: &dyn Store, json: bool) -> Out {
    let list = store.instance_list().await?;
    if json {
        print_json(&list);
    } else if list.is_empty() {
        println!("no instances registered: add one with `syncpool instances add`");
    } else {
        println!(
            "{:<6} {:<30} {:<10} {:<24} state",
            "id", "name", "kind", "address"
        );
        for i in list {
            let addr = match (&i.host, i.port) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.clone(),
                _ => "-".into(),
            };
            println!(
                "{:<6} {:<30} {:<10} {:<24} {}",
                i.id,
                printable(&i.name),
                printable(i.kind.as_str()),
                printable(&addr),
                if i.active { "active" } else { "inactive" }
            );
        }
    }
    Ok(())
}

async fn remove(store: &dyn Store, name: &str) -> Out {
    let inst = store
        .instance_get_by_name(name)
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown instance '{name}'")))?;
    store.instance_delete(inst.id).await?;
    println!("removed {}", printable(name));
    Ok(())
}

/// The validated instance that `instances add` describes.
pub(crate) fn new_instance_from_args(a: &AddArgs) -> Result<NewInstance, CliError> {
    Ok(validate::new_instance(NewInstance {
        name: a.name.clone(),
        kind: a.kind.parse().map_err(CliError::Usage)?,
        host: a.host.clone(),
        port: a.port,
        username: a.username.clone(),
        database: a.database.clone(),
        password_env: a.password_env.clone(),
        password_file: a.password_file.clone(),
        options: validate::option_pairs(&a.options)?,
        active: true,
        group: a.group.clone(),
    })?)
}

/// Reads and validates an import file, all of it, before anything is written.
pub(crate) fn read_import(file: &std::path::Path) -> Result<Vec<NewInstance>, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let list: Vec<NewInstance> = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is not a JSON array of instances: {e}",
            file.display()
        ))
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut valid = Vec::with_capacity(list.len());
    for (i, n) in list.into_iter().enumerate() {
        let n = validate::new_instance(n)
            .map_err(|e| CliError::Usage(format!("instance #{}: {e}", i + 1)))?;
        if !seen.insert(n.name.clone()) {
            return Err(CliError::Usage(format!(
                "instance #{}: the name '{}' appears twice in the file",
                i + 1,
                n.name
            )));
        }
        valid.push(n);
    }
    Ok(valid)
}

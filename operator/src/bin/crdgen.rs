//! Prints the SimpsonModel CRD as YAML: `make crds` writes it to crds/simpsonmodel.yaml.

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let yaml = face2simpson_operator::crd::crd_yaml()?;
    std::io::stdout().write_all(yaml.as_bytes())?;
    Ok(())
}

//! `metacompress init`: P_meta weights with the paper's initialisation.

use metacompress::files;
use metacompress::{Error, PMeta, Result};

use crate::cli_args::InitArgs;

pub(crate) fn init(args: InitArgs) -> Result<()> {
    files::check_output("--output", &args.output, &[])?;
    let position = match &args.pos {
        None => None,
        Some(text) => {
            let bad = || {
                Error::InvalidArgument(format!(
                    "--pos {text:?} is not a table size; expected GHxGW such as 24x24"
                ))
            };
            let (height, width) = text.split_once(['x', 'X']).ok_or_else(bad)?;
            Some((
                height.trim().parse().map_err(|_| bad())?,
                width.trim().parse().map_err(|_| bad())?,
            ))
        }
    };
    let weights = PMeta::init(args.dim, args.dc, position, args.pos_scale, args.seed)?;
    files::write_weights(&args.output, &weights)?;
    say!(
        "wrote P_meta (d {}, d_c {}, w_q = w_k orthonormal from seed {}, omega = 1{}) to {}",
        args.dim,
        args.dc,
        args.seed,
        position.map_or(String::new(), |(h, w)| format!(
            ", {h}x{w} sine-cosine position table x {}",
            args.pos_scale
        )),
        args.output.display()
    );
    Ok(())
}

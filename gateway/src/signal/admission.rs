//! Who may start what: the target a caller may reach (`authorize`), and whether the gateway
//! takes a new media session at all (`admit`: draining, load, limits, a call slot).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::error;
use super::protocol::{ErrorCode, ServerMessage};
use crate::call::CallContext;
use crate::token::Claims;

/// Without a token only an anonymous (demo) gateway lets a client start media sessions.
pub(super) fn signed_in_or_anonymous(
    ctx: &CallContext,
    claims: Option<&Claims>,
) -> Result<(), (ErrorCode, String)> {
    if claims.is_none() && !ctx.config.http.anonymous {
        return Err((
            ErrorCode::Unauthorized,
            "send `auth` with a token first".into(),
        ));
    }
    Ok(())
}

/// Decides what `to` means for this caller: `(trunk, number)`, or the error to send.
pub(super) fn authorize(
    ctx: &CallContext,
    claims: Option<&Claims>,
    to: &str,
) -> Result<(String, String), (ErrorCode, String)> {
    if let Some(target) = ctx.config.targets.get(to) {
        signed_in_or_anonymous(ctx, claims)?;
        return if claims.is_none_or(|c| c.targets.iter().any(|t| t == to || t == "*")) {
            Ok((target.trunk.clone(), target.number.clone()))
        } else {
            Err((
                ErrorCode::Forbidden,
                format!("the token does not allow calling `{to}`"),
            ))
        };
    }
    // A raw number: toll fraud's favourite, so only with a token that says `numbers`, only on
    // the trunk the operator named for it, and only digits (a leading + allowed).
    let dialable = to.len() >= 3
        && to
            .trim_start_matches('+')
            .chars()
            .all(|ch| ch.is_ascii_digit());
    match (claims, &ctx.config.http.numbers_trunk) {
        (Some(c), Some(trunk)) if c.numbers && dialable => Ok((trunk.clone(), to.to_string())),
        (Some(c), None) if c.numbers => Err((
            ErrorCode::Forbidden,
            "raw numbers are not enabled on this gateway ([http] numbers_trunk)".into(),
        )),
        (Some(c), Some(_)) if c.numbers => Err((
            ErrorCode::Forbidden,
            format!("`{to}` is not a target name or a dialable number"),
        )),
        _ => Err((
            ErrorCode::Forbidden,
            format!("no target named `{to}`; widgets call target names, not numbers"),
        )),
    }
}

/// What every new media session (a call or a preflight) must pass: the gateway takes calls,
/// its media keeps time, this connection (with `live` calls) is under its limit, and a call
/// slot is free. Returns the slot, held until the session ends, or the error to send.
pub(super) fn admit(
    ctx: &Arc<CallContext>,
    live: usize,
) -> Result<crate::call::CallSlot, Box<ServerMessage>> {
    let refuse = |code, message: String| Err(Box::new(error(code, message, None)));
    if ctx.is_draining() {
        return refuse(
            ErrorCode::Draining,
            "the gateway is shutting down; try again shortly".into(),
        );
    }
    if let Some(why) = ctx.media_full() {
        ctx.metrics.load.calls_shed.fetch_add(1, Ordering::Relaxed);
        return refuse(
            ErrorCode::LimitReached,
            format!("the gateway is at capacity ({why}); try again shortly"),
        );
    }
    if live >= ctx.config.limits.max_calls_per_connection as usize {
        return refuse(
            ErrorCode::LimitReached,
            format!("this connection has {live} calls already (limits.max_calls_per_connection)"),
        );
    }
    ctx.take_call_slot().map_or_else(
        || {
            refuse(
                ErrorCode::LimitReached,
                format!(
                    "the gateway's limit of {} calls is reached",
                    ctx.config.limits.max_calls
                ),
            )
        },
        Ok,
    )
}

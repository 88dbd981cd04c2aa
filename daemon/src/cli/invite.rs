//! `twofold invite` and `twofold bypass`: letting an account enroll at its next login, and a
//! helpdesk code for one that lost its phone (root).

use super::*;

/// Exactly one of NAME, `--list`, `--revoke NAME`.
pub(super) fn invite(
    ctx: &Ctx,
    user: Option<String>,
    for_secs: Option<u64>,
    replace: bool,
    list: bool,
    revoke: Option<String>,
) -> u8 {
    match (user, list, revoke) {
        (Some(user), false, None) => ctx.ask(RequestBody::Invite {
            user,
            for_secs,
            replace,
        }),
        (None, true, None) if for_secs.is_none() && !replace => {
            ctx.show(RequestBody::InviteList {}, |ctx, r| match r {
                ResponseBody::Invitations { invitations } => {
                    print_invitations(ctx, invitations);
                    true
                }
                _ => false,
            })
        }
        (None, false, Some(user)) if for_secs.is_none() && !replace => {
            ctx.ask(RequestBody::InviteRevoke { user })
        }
        _ => ctx.fail("give an account to invite, or --list, or --revoke NAME"),
    }
}

fn print_invitations(ctx: &Ctx, invitations: &[twofold_shared::wire::InvitationInfo]) {
    if ctx.json {
        println!("{}", json!({ "invitations": invitations }));
        return;
    }
    if invitations.is_empty() {
        println!("No invitations.");
        return;
    }
    println!("{:<24} {:<10} {:<22} STATE", "USER", "KIND", "UNTIL");
    for i in invitations {
        println!(
            "{:<24} {:<10} {:<22} {}",
            i.user,
            if i.replace { "replace" } else { "enroll" },
            format_time(i.expires_at),
            if i.expired { "expired" } else { "open" }
        );
    }
}

/// NAME (a new code) or `--revoke NAME`.
pub(super) fn bypass(
    ctx: &Ctx,
    user: Option<String>,
    for_secs: Option<u64>,
    uses: Option<u32>,
    revoke: Option<String>,
) -> u8 {
    let request = match (user, revoke) {
        (Some(user), None) => RequestBody::Bypass {
            user,
            for_secs,
            uses,
        },
        (None, Some(user)) if for_secs.is_none() && uses.is_none() => {
            return ctx.ask(RequestBody::BypassRevoke { user })
        }
        _ => return ctx.fail("give the account for a helpdesk code, or --revoke NAME"),
    };
    match ctx.call(request) {
        Ok(ResponseBody::BypassCode {
            user,
            code,
            expires_at,
            uses,
        }) => {
            if ctx.json {
                println!(
                    "{}",
                    json!({"user": user, "code": code.expose(), "expires_at": expires_at, "uses": uses})
                );
            } else {
                println!(
                    "Helpdesk code for {user}: {} login(s) until {}, without their phone:\n",
                    uses,
                    format_time(expires_at)
                );
                println!("    {}\n", code.expose());
                println!("They type it at the verification code prompt. It is shown only once;");
                println!("'twofold bypass --revoke {user}' withdraws it.");
            }
            exit::OK
        }
        Ok(other) => ctx.report(other),
        Err(e) => e,
    }
}

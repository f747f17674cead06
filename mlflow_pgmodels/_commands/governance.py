"""``mlflow-pgmodels protect / unprotect / four-eyes / approve / write-rights``: the governance rules."""

from __future__ import annotations

import argparse
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_pgmodels._lifecycle import governance
from mlflow_pgmodels._pg.uri import URI_HELP


def _protect(args: argparse.Namespace) -> int:
    if args.list:
        for rule in governance.protections(args.uri):
            print(rule.describe())
        return 0
    if args.name is None or args.role is None:
        raise MlflowException.invalid_parameter_value("protect: give NAME and --role ROLE with --alias or --stage (or --list)")
    rule = governance.protect(args.uri, args.name, args.role, alias=args.alias, stage=args.stage)
    print(f"protected {rule.kind} '{rule.value}' of '{rule.name_pattern}': only members of role "
          f"'{rule.role}' may set, move or remove it")
    return 0


def _unprotect(args: argparse.Namespace) -> int:
    removed = governance.unprotect(args.uri, args.name, alias=args.alias, stage=args.stage)
    what = f"--alias {args.alias}" if args.alias is not None else f"--stage {args.stage}"
    print(f"{'removed' if removed else 'there was no'} rule protecting {what} of '{args.name}'")
    return 0


def _four_eyes(args: argparse.Namespace) -> int:
    if args.state is None:
        if args.name is not None:
            raise MlflowException.invalid_parameter_value(f"four-eyes: say `four-eyes {args.name} on` or `off`")
        for pattern in governance.four_eyes(args.uri):
            print(pattern)
        return 0
    changed = governance.set_four_eyes(args.uri, args.name, args.state == "on")
    print(f"four-eyes {'was already ' if not changed else ''}{args.state} for '{args.name}'")
    return 0


def _approve(args: argparse.Namespace) -> int:
    approvers = governance.approve(args.uri, args.name, args.version)
    print(f"model '{args.name}' version {args.version} approved by {', '.join(approvers)}")
    return 0


def _write_rights(args: argparse.Namespace) -> int:
    if args.list:
        for role, pattern in governance.write_rights(args.uri):
            print(f"{role}\t{pattern}")
        return 0
    if args.role is None or (args.models is None and not args.revoke):
        raise MlflowException.invalid_parameter_value("write-rights: give ROLE and --models PATTERN (or --revoke, or --list)")
    if args.revoke:
        count = governance.revoke_write_rights(args.uri, args.role, args.models)
        print(f"removed {count} write rights of role '{args.role}'")
    else:
        governance.grant_write_rights(args.uri, args.role, args.models)
        print(f"members of role '{args.role}' may write the models '{args.models}' (and only the models "
              "its write rights list)")
    return 0


def add_parser(sub: Any) -> None:
    """The governance subcommands of mlflow-pgmodels."""
    rules = "the database enforces it for every client (MLflow, the UI, plain SQL); docs/governance.md"
    protect = sub.add_parser("protect", help="only members of a role may set, move or remove an alias or stage",
                             description=f"Protect an alias or a stage of a model: {rules}.")
    protect.add_argument("name", nargs="?", help="registered model name, a pattern ('team-a-*') or '*' (all)")
    protect.add_argument("--role", help="the PostgreSQL role whose members may change it")
    protect.add_argument("--list", action="store_true", help="list the rules")
    protect.set_defaults(func=_protect)
    unprotect = sub.add_parser("unprotect", help="remove a protection rule")
    unprotect.add_argument("name", help="as given to protect")
    unprotect.set_defaults(func=_unprotect)
    for p in (protect, unprotect):
        which = p.add_mutually_exclusive_group(required=p is unprotect)
        which.add_argument("--alias", help="an alias, e.g. champion ('latest': the highest active version)")
        which.add_argument("--stage", help="Staging, Production or Archived")

    four = sub.add_parser("four-eyes", help="promotion only after a second database user approved the version",
                          description=f"Four-eyes promotion: {rules}.")
    four.add_argument("name", nargs="?", help="registered model name or pattern (without: list)")
    four.add_argument("state", nargs="?", choices=["on", "off"])
    four.set_defaults(func=_four_eyes)

    approve = sub.add_parser("approve", help="approve a version, as the database user of the URI")
    approve.add_argument("name")
    approve.add_argument("version", type=int)
    approve.set_defaults(func=_approve)

    rights = sub.add_parser("write-rights", help="limit a role's writes to some models",
                            description=f"Per-model write rights: {rules}.")
    rights.add_argument("role", nargs="?")
    rights.add_argument("--models", help="model name pattern its members may write, e.g. 'team-a-*'")
    rights.add_argument("--revoke", action="store_true", help="remove the pattern (all of the role's without --models)")
    rights.add_argument("--list", action="store_true")
    rights.set_defaults(func=_write_rights)
    for p in (protect, unprotect, four, approve, rights):
        p.add_argument("--uri", help=URI_HELP)

import { auditReportCommand } from './audit-report.js';
import { auditVerifyCommand } from './audit-verify.js';
import { backupCommand } from './backup.js';
import type { Command } from './command.js';
import { restoreCommand } from './restore.js';
import { signupTokenCommand } from './signup-token.js';
import { userDeleteCommand } from './user-delete.js';
import { userExportCommand } from './user-export.js';
import { userImportCommand } from './user-import.js';

/** `user <export|import|delete> …`: the subcommand's own module validates the rest. */
const userCommand: Command = async (argv, io) => {
  switch (argv[0]) {
    case 'export':
      return userExportCommand(argv, io);
    case 'import':
      return userImportCommand(argv, io);
    case 'delete':
      return userDeleteCommand(argv, io);
    default:
      io.err(`keel-relay: unknown user command "${String(argv[0] ?? '')}"; use user export, user import or user delete\n`);
      return 64;
  }
};

/** `audit <verify|report> …`. */
const auditCommand: Command = async (argv, io) => {
  switch (argv[0]) {
    case 'report':
      return auditReportCommand(argv, io);
    case 'verify':
      return auditVerifyCommand(argv, io);
    default:
      io.err(`keel-relay: unknown audit command "${String(argv[0] ?? '')}"; use audit verify or audit report\n`);
      return 64;
  }
};

/** Operator commands by their first word; cli.ts hands each the rest of argv. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  audit: auditCommand,
  user: userCommand,
  backup: backupCommand,
  restore: restoreCommand,
  'signup-token': signupTokenCommand,
};

export const COMMANDS_USAGE = `       keel-relay audit verify --db <file>
       keel-relay audit report --from <ISO date|ms> --to <ISO date|ms> [--db <file>] [--tiers <file>] [--json]
       keel-relay user export <user-id> --out <file> [--db <file>]
       keel-relay user import --in <file> [--db <file>]          (relay stopped)
       keel-relay user delete <user-id> [--db <file>]            (relay stopped)
       keel-relay backup --to <file> [--db <file>]               (while the relay serves)
       keel-relay restore --from <backup> --db <new-file>
       keel-relay signup-token create [--expires 7d] [--db <file>]`;

'use strict';
// better-sqlite3 cannot download a prebuilt binary on an offline machine, and node-gyp
// cannot fetch Node's headers. Point the build at the headers the system Node ships.
// pnpm 11+ does not pass .npmrc's nodedir to build scripts, so it goes through extraEnv.
const fs = require('node:fs');

module.exports = {
  hooks: {
    updateConfig(config) {
      if (fs.existsSync('/usr/include/node/node.h')) {
        config.extraEnv = { ...(config.extraEnv ?? {}), npm_config_nodedir: '/usr' };
      }
      return config;
    },
  },
};

# A NixOS module for isolate: `services.isolate` runs the daemon, and each
# `services.isolate.instances.<name>` becomes a policy file /etc/isolate/instances/<name>.toml
# (see `man 5 isolate.toml`) and, when it has a `command`, a service `isolate-<name>` that runs
# the command confined (`isolate exec --instance <name> -- <command>`).
#
# Import it from configuration.nix and set `package`: isolate is not in nixpkgs.
#
#   imports = [ ./isolate.nix ];
#   services.isolate = {
#     enable = true;
#     package = isolatePackage;          # a derivation with bin/isolate
#     instances.my-project = {
#       directory = "/srv/my-project";
#       presets = [ "opencode" "anthropic" ];
#       networkIsolation.allowedCIDRs = [ "10.0.0.0/8" ];
#       networkIsolation.listen = [ "127.0.0.1:8787/tcp" ];
#       sandbox.readWritePaths = [ "/srv/my-project" ];
#       command = "${pkgs.opencode}/bin/opencode serve --port 8787 --hostname 127.0.0.1";
#     };
#   };
#
# The per-instance options keep the shape NixOS users know from `networkIsolation` and
# `sandbox` options; each maps onto one policy field, named in its description.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types;

  cfg = config.services.isolate;

  toml = pkgs.formats.toml { };

  networkOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Confine the instance's network to the lists below. When false, `network.allow` is
          every address (0.0.0.0/0 and ::/0): only the files stay confined.
        '';
      };
      allowedCIDRs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.0/8" "192.168.1.10/32:5432/tcp" "[2001:db8::/32]:443" ];
        description = ''
          Addresses and networks the instance may reach, with an optional port (range) and
          protocol: `network.allow`.
        '';
      };
      allowedHosts = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "api.anthropic.com:443/tcp" "*.githubusercontent.com:443/tcp" ];
        description = ''
          Host names (exact, or `*.` for any name below) the instance may reach; their
          addresses are let through as the instance's own DNS answers give them. Also
          `network.allow`.
        '';
      };
      listen = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "127.0.0.1:8787/tcp" ];
        description = "Local addresses and ports the instance may serve: `network.listen`.";
      };
      dns = mkOption {
        type = types.either (types.enum [ "system" "none" ]) (types.listOf types.str);
        default = "system";
        description = ''
          Where isolate's resolver asks the allowed names: "system" (/etc/resolv.conf), a
          list of resolver addresses, or "none": `network.dns`.
        '';
      };
      unixSockets = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/run/postgresql/.s.PGSQL.5432" ];
        description = "Unix sockets the instance may connect to: `network.unix_sockets`.";
      };
      logRate = mkOption {
        type = types.str;
        default = "10/second";
        description = "At most this many audit records per instance: `network.log.rate`.";
      };
    };
  };

  sandboxOptions = {
    options = {
      readWritePaths = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Trees the instance may read and write: `filesystem.read_write`.";
      };
      readOnlyPaths = mkOption {
        type = types.listOf types.str;
        default = [ "/nix/store" ];
        description = ''
          Trees the instance may read: `filesystem.read_only`. On NixOS programs and their
          libraries live in /nix/store.
        '';
      };
      execPaths = mkOption {
        type = types.listOf types.str;
        default = [ "/nix/store" "/run/current-system/sw" ];
        description = "Trees whose files the instance may execute: `filesystem.exec`.";
      };
      landlockMinimumAbi = mkOption {
        type = types.ints.between 1 7;
        default = 1;
        description = "Refuse to run below this Landlock ABI: `landlock.minimum_abi`.";
      };
    };
  };

  instanceOptions = { name, ... }: {
    options = {
      user = mkOption {
        type = types.str;
        default = "isolate-${name}";
        description = ''
          The account the instance runs as: `user`. The daemon enforces by UID, so it needs
          a named account ("dynamic" works for `isolate exec` alone, without the daemon).
        '';
      };
      createUser = mkOption {
        type = types.bool;
        default = true;
        description = "Create `user` as a system user (home /var/lib/isolate/<name>).";
      };
      directory = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The service's working directory: `directory`.";
      };
      presets = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "opencode" "anthropic" "github" ];
        description = "Shipped policy fragments to merge (`isolate presets`): `presets`.";
      };
      networkIsolation = mkOption {
        type = types.submodule networkOptions;
        default = { };
        description = "What the instance may reach and serve: the policy's `[network]`.";
      };
      sandbox = mkOption {
        type = types.submodule sandboxOptions;
        default = { };
        description = "Which files it may read, write and execute: `[filesystem]`, `[landlock]`.";
      };
      command = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/current-system/sw/bin/opencode serve --port 8787 --hostname 127.0.0.1";
        description = ''
          When set, a service `isolate-<name>` runs it confined:
          `isolate exec --instance <name> -- <command>`.
        '';
      };
    };
  };

  # The policy file's contents: every option above, under the policy field it names. A null
  # `directory` is left out (TOML has no null).
  policy = name: inst:
    let
      net = inst.networkIsolation;
      box = inst.sandbox;
    in
    {
      inherit name;
      inherit (inst) user presets;
      network = {
        allow = if net.enable then net.allowedCIDRs ++ net.allowedHosts else [ "0.0.0.0/0" "::/0" ];
        inherit (net) listen dns;
        unix_sockets = net.unixSockets;
        log = { rate = net.logRate; };
      };
      filesystem = {
        read_write = box.readWritePaths;
        read_only = box.readOnlyPaths;
        exec = box.execPaths;
      };
      landlock = { minimum_abi = box.landlockMinimumAbi; };
    }
    // lib.optionalAttrs (inst.directory != null) { inherit (inst) directory; };

  policyFile = name: inst: toml.generate "${name}.toml" (policy name inst);

  isolate = "${cfg.package}/bin/isolate";

  withCommand = lib.filterAttrs (_: inst: inst.command != null) cfg.instances;
  withUser = lib.filterAttrs (_: inst: inst.createUser && inst.user != "dynamic") cfg.instances;
in
{
  options.services.isolate = {
    enable = mkEnableOption "the isolate daemon, which enforces every instance's network policy";
    package = mkOption {
      type = types.package;
      description = "The isolate package (not in nixpkgs: build it from the project's source).";
    };
    metricsAddress = mkOption {
      type = types.str;
      default = "127.0.0.1:9477";
      description = "Where Prometheus metrics are served (/metrics), or \"off\".";
    };
    layers = mkOption {
      type = types.listOf (types.enum [ "ebpf" "nftables" ]);
      default = [ "ebpf" "nftables" ];
      description = "The network layers the daemon enforces.";
    };
    instances = mkOption {
      type = types.attrsOf (types.submodule instanceOptions);
      default = { };
      description = "The confined instances, each a policy file /etc/isolate/instances/<name>.toml.";
    };
  };

  config = mkIf cfg.enable {
    environment.etc = lib.mapAttrs'
      (name: inst: lib.nameValuePair "isolate/instances/${name}.toml" {
        source = policyFile name inst;
        # A copy that root alone reads, as the Debian package keeps /etc/isolate/instances,
        # rather than the usual link into the world-readable store.
        mode = "0600";
      })
      cfg.instances;

    users.users = lib.mapAttrs'
      (name: inst: lib.nameValuePair inst.user {
        isSystemUser = true;
        group = inst.user;
        # The daemon and `isolate exec` refuse a named user whose home does not exist.
        home = "/var/lib/isolate/${name}";
        createHome = true;
      })
      withUser;
    users.groups = lib.mapAttrs' (_: inst: lib.nameValuePair inst.user { }) withUser;

    systemd.services = {
      # As dist/systemd/isolate.service: enforcement is pinned in the kernel, so restarting
      # or stopping the daemon never opens a gap; `isolate daemon --cleanup` takes it away.
      isolate = {
        description = "isolate: network and file confinement of service instances";
        documentation = [ "man:isolate(1)" ];
        after = [ "local-fs.target" "systemd-journald.socket" ];
        # Confinement must be in place before the services it confines reach the network.
        before = [ "network-pre.target" ];
        wants = [ "network-pre.target" ];
        wantedBy = [ "multi-user.target" ];
        # The nftables layer runs `nft`.
        path = [ pkgs.nftables ];
        # A changed policy is re-read (SIGHUP) rather than the daemon restarted.
        reloadTriggers = lib.mapAttrsToList policyFile cfg.instances;
        serviceConfig = {
          Type = "simple";
          ExecStart = "${isolate} daemon --metrics ${cfg.metricsAddress} --layers ${lib.concatStringsSep "," cfg.layers}";
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "always";
          RestartSec = 1;
          # Only the daemon process is signalled: nothing it applied depends on it staying alive.
          KillMode = "process";
        };
      };
    }
    // lib.mapAttrs'
      (name: inst: lib.nameValuePair "isolate-${name}" {
        description = "${name}, confined by isolate";
        after = [ "network-online.target" "isolate.service" ];
        wants = [ "network-online.target" "isolate.service" ];
        wantedBy = [ "multi-user.target" ];
        # `isolate exec` reads the policy once, at start.
        restartTriggers = [ (policyFile name inst) ];
        serviceConfig = {
          Type = "simple";
          ExecStart = "${isolate} exec --instance ${name} -- ${inst.command}";
          # isolate forwards SIGTERM to the command and removes what it applied when it exits.
          KillMode = "mixed";
          Restart = "on-failure";
          RestartSec = 2;
        };
      })
      withCommand;
  };
}

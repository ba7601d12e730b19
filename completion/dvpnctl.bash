# bash completion for dvpnctl
_dvpnctl() {
    local cur prev words cword
    _init_completion || return
    local top="check pubkey status reload down firewall spoke hub roster authority relay rotate-key pg backup lab"
    case "${words[1]}" in
        firewall) [ "$cword" -eq 2 ] && COMPREPLY=($(compgen -W "show apply" -- "$cur")) && return ;;
        spoke) [ "$cword" -eq 2 ] && COMPREPLY=($(compgen -W "add remove rotate" -- "$cur")) && return ;;
        pg) [ "$cword" -eq 2 ] && COMPREPLY=($(compgen -W "setup password init-replica promote follow status" -- "$cur")) && return ;;
        backup) [ "$cword" -eq 2 ] && COMPREPLY=($(compgen -W "now status restore" -- "$cur")) && return ;;
        relay) [ "$cword" -eq 2 ] && COMPREPLY=($(compgen -W "fingerprint" -- "$cur")) && return ;;
        lab) [ "$cword" -eq 2 ] && COMPREPLY=($(compgen -W "up status down exec block-udp transport" -- "$cur")) && return ;;
    esac
    case "$prev" in
        --config) _filedir yaml; return ;;
        --to) _filedir -d; return ;;
        --backend) COMPREPLY=($(compgen -W "auto kernel userspace" -- "$cur")); return ;;
    esac
    if [ "$cword" -eq 1 ]; then
        COMPREPLY=($(compgen -W "$top" -- "$cur"))
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "--config --json --help" -- "$cur"))
    fi
}
complete -F _dvpnctl dvpnctl
